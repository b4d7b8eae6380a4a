"""Sign in with an API key, sign out."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from api.deps import SessionDep, SettingsDep
from core.admin import KeyRejected, authenticate
from web import sessions
from web.auth import Changer, same_origin
from web.templating import render

router = APIRouter(include_in_schema=False)

#: Before there is a session, the sign-in form's CSRF token is a random value in a cookie of
#: its own that the form repeats (a double submit): another site can neither read nor set it.
SIGNIN_COOKIE = "mp_signin"


def _safe_next(target: str | None) -> str:
    # Only a path on this site: "//host" or "https://host" would send the user elsewhere.
    if target and target.startswith("/") and not target.startswith(("//", "/\\")):
        return target
    return "/jobs"


def _signin_page(
    request: Request, *, next_path: str, error: str | None = None, status_code: int = 200
) -> HTMLResponse:
    token = request.cookies.get(SIGNIN_COOKIE) or secrets.token_urlsafe(32)
    response = render(
        request,
        "signin.html",
        viewer=None,
        status_code=status_code,
        signin_token=token,
        next_path=next_path,
        error=error,
        signed_out=request.query_params.get("signed_out") == "1",
    )
    response.set_cookie(
        SIGNIN_COOKIE,
        token,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/signin",
    )
    return response


@router.get("/signin", response_class=HTMLResponse)
def signin_form(request: Request, next: str | None = None) -> HTMLResponse:
    return _signin_page(request, next_path=_safe_next(next))


@router.post("/signin", response_class=HTMLResponse)
def signin(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    api_key: Annotated[str, Form(max_length=200)] = "",
    csrf_token: Annotated[str, Form(max_length=200)] = "",
    next: Annotated[str, Form(max_length=2000)] = "/jobs",
) -> Response:
    same_origin(request)
    expected = request.cookies.get(SIGNIN_COOKIE, "")
    if not expected or not secrets.compare_digest(csrf_token, expected):
        return _signin_page(
            request,
            next_path=_safe_next(next),
            error="The form expired; please sign in again.",
            status_code=403,
        )
    api_key = api_key.strip()
    try:
        key = authenticate(session, api_key)
    except KeyRejected as exc:
        return _signin_page(
            request, next_path=_safe_next(next), error=f"Sign-in failed: {exc}.", status_code=401
        )
    token = sessions.start(session, key)
    response = RedirectResponse(_safe_next(next), status_code=303)
    response.set_cookie(
        sessions.COOKIE,
        token,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
        # No max-age: the server decides when a session ends (idle or too old), and the
        # browser drops the cookie when it closes.
    )
    response.delete_cookie(SIGNIN_COOKIE, path="/signin")
    return response


@router.post("/signout")
def signout(viewer: Changer, session: SessionDep) -> Response:
    sessions.end(session, viewer.token_hash)
    response = RedirectResponse("/signin?signed_out=1", status_code=303)
    response.delete_cookie(sessions.COOKIE, path="/")
    return response
