"""Mounts the dashboard on the API's application: its routes, its static files, its error
pages and the headers every page carries."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import Problem
from web.auth import SignInRequired
from web.routes import compare, compose, home, job_page, jobs, library, signin
from web.routes.admin import router as admin_router
from web.routes.workers import router as workers_router
from web.templating import STATIC_DIR, render

#: Dashboard routes whose body is a streamed upload; the API's request guard lets them past
#: its JSON body limit (api.main).
STREAMED_ROUTES = library.STREAMED_ROUTES

#: Paths that belong to the API, not to the dashboard: errors there stay problem+json.
_API_PATHS = ("/v1", "/openapi.json", "/docs", "/redoc", "/healthz", "/readyz", "/metrics")

#: Pages load nothing from elsewhere and run no inline script: everything they use is served
#: from /static (vendored npm packages included), so the policy can be this strict.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
_PAGE_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "x-frame-options": "DENY",
}


def is_page(path: str) -> bool:
    return not any(path == p or path.startswith(p + "/") for p in _API_PATHS)


class PageHeaders:
    """Adds the security headers to every dashboard response (pages, fragments, files)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_page(scope["path"]):
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in _PAGE_HEADERS.items():
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def _call(handler: Callable[..., Any], request: Request, exc: Exception) -> Response:
    answer = handler(request, exc)
    if inspect.isawaitable(answer):
        answer = await answer
    assert isinstance(answer, Response)
    return answer


def _install_error_pages(app: FastAPI) -> None:
    """On dashboard paths an error is a page (or, for an htmx fragment, a short message);
    under /v1 the API's problem+json handlers answer as before."""
    api_problem = app.exception_handlers[Problem]
    api_http = app.exception_handlers[StarletteHTTPException]

    def page(request: Request, status: int, title: str, detail: str) -> Response:
        return render(
            request,
            "error.html",
            viewer=None,
            status_code=status,
            status=status,
            title=title,
            detail=detail,
        )

    async def on_problem(request: Request, exc: Exception) -> Response:
        if not is_page(request.url.path):
            return await _call(api_problem, request, exc)
        assert isinstance(exc, Problem)
        return page(request, exc.status, exc.title, exc.detail)

    async def on_http(request: Request, exc: Exception) -> Response:
        if not is_page(request.url.path):
            return await _call(api_http, request, exc)
        assert isinstance(exc, StarletteHTTPException)
        title = "Not found" if exc.status_code == 404 else "Error"
        return page(request, exc.status_code, title, str(exc.detail))

    async def on_signin_required(request: Request, exc: Exception) -> Response:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        location = "/signin?next=" + quote(target, safe="")
        if request.headers.get("hx-request") == "true" or request.method != "GET":
            # htmx follows HX-Redirect with a full page load (a fragment can't be a page).
            return Response(status_code=401, headers={"HX-Redirect": location})
        return RedirectResponse(location, status_code=303)

    app.add_exception_handler(Problem, on_problem)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(SignInRequired, on_signin_required)


def install(app: FastAPI) -> None:
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    # The composer's /jobs/new before any /jobs/{job_id}.
    for router in (
        signin.router,
        home.router,
        compose.router,
        jobs.router,
        job_page.router,
        compare.router,
        library.router,
    ):
        app.include_router(router)
    app.include_router(admin_router)
    app.include_router(workers_router)
    _install_error_pages(app)
    app.add_middleware(PageHeaders)
