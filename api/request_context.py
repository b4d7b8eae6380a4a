"""The outermost layer of every request: its id (a sane incoming `X-Request-ID`, or a new
one) on the log lines written for it and in an `X-Request-ID` header of every answer, one
access log line, and its time in the HTTP latency histogram by route template.

Outermost, so that what the other layers answer by themselves (a missing key, a body too
large) is counted, logged and carries the id too."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Iterator

from fastapi import FastAPI
from starlette.datastructures import MutableHeaders
from starlette.routing import Mount, compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core import logs
from core.metrics import observe_http

access_log = logging.getLogger("modelpress.access")

REQUEST_ID_HEADER = "X-Request-ID"
#: Where the request's id is kept in the ASGI scope, for the answers that are built outside
#: this layer (api.errors.problem_response: the 500 of an unexpected error).
STATE_REQUEST_ID = "request_id"
#: An incoming id is kept when it looks like an id (UUIDs, trace ids, a proxy's ids); anything
#: else is replaced, so no header can put odd characters or long text in the logs.
_SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
#: The route label of a path that no route has: unknown paths do not become label values.
UNMATCHED = "unmatched"
#: Methods a client may send are any token; others are counted together.
_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}


def route_templates(app: FastAPI) -> list[tuple[str, re.Pattern[str]]]:
    """(template, compiled pattern) of every route, those with fewer parameters first so
    that `/v1/jobs/summary` is not taken for `/v1/jobs/{job_id}`. A mounted app (static
    files) is one template, `/static/{path:path}`."""
    paths = set(app.openapi().get("paths", {}))
    for path, mounted in _full_paths(app):
        if mounted:
            paths.add(path.rstrip("/") + "/{path:path}")
        elif path:
            paths.add(path)
    ordered = sorted(paths, key=lambda path: (path.count("{"), path))
    return [(path, compile_path(path)[0]) for path in ordered]


def _full_paths(app: FastAPI) -> Iterator[tuple[str, bool]]:
    """(full path, is a mount) of every route, those of included routers too (whose own
    `path` leaves out their routers' prefixes), the ones not in the OpenAPI document too."""
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # FastAPI before included routers were kept nested: app.routes is flat
        for route in app.routes:
            yield getattr(route, "path", ""), isinstance(route, Mount)
        return
    for context in iter_route_contexts(app.routes):
        yield context.path or "", isinstance(context.original_route, Mount)


def _request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            text = value.decode("latin-1")
            if _SAFE_REQUEST_ID.fullmatch(text):
                return text
            break
    return uuid.uuid4().hex


class RequestContext:
    def __init__(self, app: ASGIApp, *, templates: list[tuple[str, re.Pattern[str]]]) -> None:
        self.app = app
        self.templates = templates

    def _route(self, path: str) -> str:
        for template, pattern in self.templates:
            if pattern.fullmatch(path):
                return template
        return UNMATCHED

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        scope.setdefault("state", {})[STATE_REQUEST_ID] = request_id
        token = logs.request_id.set(request_id)
        started = time.perf_counter()
        # A failure before the answer started becomes a 500 (Starlette's error layer).
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = MutableHeaders(scope=message)
                if REQUEST_ID_HEADER not in headers:
                    headers.append(REQUEST_ID_HEADER, request_id)
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            route = self._route(scope["path"])
            method = scope["method"] if scope["method"] in _METHODS else "other"
            observe_http(method=method, route=route, status=status, seconds=seconds)
            access_log.info(
                "%s %s %d %.1f ms",
                method,
                scope["path"],
                status,
                seconds * 1000,
                extra={
                    "method": method,
                    "route": route,
                    "path": scope["path"],
                    "status": status,
                    "duration_ms": round(seconds * 1000, 2),
                },
            )
            logs.request_id.reset(token)
