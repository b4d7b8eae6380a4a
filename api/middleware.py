"""What every request passes before the application reads it: under `/v1` the caller's key
is checked before a byte of the body is read, and every body but a streamed upload is held
to MODELPRESS_MAX_JSON_BODY_BYTES.

A pure ASGI middleware, because FastAPI reads and parses a route's body before it runs the
route's dependencies: an authentication dependency alone would let anyone without a key
make the server read a body of any size."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import anyio.to_thread
from fastapi import Request
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import BodyTooLarge, Problem, problem_response
from core.admin import KeyRejected, authenticate
from core.db import read_session_factory
from core.settings import get_settings
from core.tables import ApiKey

#: Every route under this prefix needs a key, and so does METRICS_PATH; the others
#: (`/healthz`, `/readyz`, `/docs`, `/openapi.json`) are public.
PROTECTED_PREFIX = "/v1"
#: Prometheus's scrape: the numbers of every project, for a key with the `instance` scope.
METRICS_PATH = "/metrics"
#: Where an authenticated request's key is kept for `api.deps.current_key`.
STATE_KEY = "api_key"

_UNAUTHORIZED_HEADERS = {"WWW-Authenticate": 'Bearer realm="modelpress"'}
#: More digits than any body size this service accepts; longer numbers are not parsed.
_MAX_LENGTH_DIGITS = 18


def streamed_uploads(openapi: dict[str, Any]) -> list[tuple[str, re.Pattern[str]]]:
    """(method, path pattern) of the routes whose body is multipart: they stream it to disk
    themselves (`api.uploads.receive_upload`) and hold it to MODELPRESS_MAX_UPLOAD_BYTES.
    Read from the OpenAPI document, where every route is listed however routers nest."""
    found = []
    for path, operations in openapi.get("paths", {}).items():
        for method, operation in operations.items():
            content = operation.get("requestBody", {}).get("content", {})
            if "multipart/form-data" in content:
                found.append((method.upper(), compile_path(path)[0]))
    return found


class RequestGuard:
    def __init__(
        self, app: ASGIApp, *, streamed_body_routes: Sequence[tuple[str, re.Pattern[str]]]
    ) -> None:
        self.app = app
        self.streamed_body_routes = tuple(streamed_body_routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if "\x00" in scope["path"] or b"%00" in scope["query_string"].lower():
            # PostgreSQL cannot hold a NUL in a string; no id or filter value has one.
            await _refuse(
                scope, receive, send, Problem(400, "the URL contains a NUL", type="invalid_url")
            )
            return
        if is_protected(scope["path"]):
            key = await _authenticate(scope)
            if isinstance(key, Problem):
                await _refuse(scope, receive, send, key)
                return
            scope.setdefault("state", {})[STATE_KEY] = key
        method, path = scope["method"], scope["path"]
        if any(m == method and p.fullmatch(path) for m, p in self.streamed_body_routes):
            await self.app(scope, receive, send)
            return
        limit = get_settings().max_json_body_bytes
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _refuse(scope, receive, send, BodyTooLarge(limit).problem())
            return
        await self.app(scope, _capped(receive, limit), send)


def is_protected(path: str) -> bool:
    return path in (PROTECTED_PREFIX, METRICS_PATH) or path.startswith(PROTECTED_PREFIX + "/")


async def _authenticate(scope: Scope) -> ApiKey | Problem:
    header = Request(scope).headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return _unauthorized("send your API key as 'Authorization: Bearer <key>'")
    try:
        # A short session of its own, in a worker thread: the event loop never waits on
        # the database, and no connection is held while the route runs or streams.
        return await anyio.to_thread.run_sync(_look_up, token)
    except KeyRejected as exc:
        return _unauthorized(str(exc))


def _look_up(token: str) -> ApiKey:
    with read_session_factory()() as session:
        # Closing the session detaches the row with its columns loaded.
        return authenticate(session, token)


def _unauthorized(detail: str) -> Problem:
    return Problem(401, detail, type="unauthorized", headers=_UNAUTHORIZED_HEADERS)


def _content_length(scope: Scope) -> int | None:
    value = Request(scope).headers.get("content-length")
    if value is None or not value.isdigit():
        return None  # the server has refused a malformed length already
    if len(value) > _MAX_LENGTH_DIGITS:
        return 10**_MAX_LENGTH_DIGITS
    return int(value)


def _capped(receive: Receive, limit: int) -> Receive:
    """`receive` that raises BodyTooLarge once more than `limit` body bytes came in (a
    chunked body has no length to check in advance)."""
    received = 0

    async def capped_receive() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise BodyTooLarge(limit)
        return message

    return capped_receive


async def _refuse(scope: Scope, receive: Receive, send: Send, problem: Problem) -> None:
    """Answers without reading the body. With a body on its way, the answer says
    `Connection: close` and the server closes the connection rather than read (and throw
    away) whatever the client still sends."""
    request = Request(scope)
    headers = dict(problem.headers or {})
    if "transfer-encoding" in request.headers or request.headers.get("content-length", "0") != "0":
        headers["Connection"] = "close"
    response = problem_response(
        request,
        status=problem.status,
        type=problem.type,
        title=problem.title,
        detail=problem.detail,
        headers=headers,
    )
    await response(scope, receive, send)
