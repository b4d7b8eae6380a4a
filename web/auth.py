"""Who is signed in, and the CSRF check every state-changing dashboard request passes.

Pages take `Viewer` (any signed-in key) or one of the scope-named dependencies below; the
scopes are the API's own (`api.deps.held_scopes`), so a page never shows or does more than
the key could through `/v1`."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import Depends, Request

from api.deps import SessionDep, SettingsDep, held_scopes
from api.errors import Problem
from core.tables import ApiKey
from web import sessions

#: Where a form carries its CSRF token; htmx and scripts send the X-CSRF-Token header instead.
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"


class SignInRequired(Exception):
    """No valid session: pages redirect to the sign-in page, fragments say 401."""


@dataclass(frozen=True)
class SignedIn:
    key: ApiKey
    csrf_token: str
    token_hash: str
    scopes: set[str] = field(default_factory=set)

    @property
    def project_id(self) -> str:
        return self.key.project_id

    def may(self, scope: str) -> bool:
        return scope in self.scopes


def signed_in(request: Request, session: SessionDep, settings: SettingsDep) -> SignedIn:
    token = request.cookies.get(sessions.COOKIE)
    found = sessions.resume(session, token, settings) if token else None
    if found is None:
        raise SignInRequired()
    return SignedIn(
        key=found.key,
        csrf_token=found.csrf_token,
        token_hash=found.token_hash,
        scopes=held_scopes(found.key),
    )


Viewer = Annotated[SignedIn, Depends(signed_in)]


def _scoped(viewer: SignedIn, scope: str) -> SignedIn:
    if not viewer.may(scope):
        raise Problem(403, f"this API key lacks the {scope!r} scope", type="forbidden")
    return viewer


def require_write(viewer: Viewer) -> SignedIn:
    return _scoped(viewer, "write")


def require_admin(viewer: Viewer) -> SignedIn:
    return _scoped(viewer, "admin")


def require_instance(viewer: Viewer) -> SignedIn:
    return _scoped(viewer, "instance")


def same_origin(request: Request) -> None:
    """A browser names the page a request came from in `Origin`; one from another site is
    refused even before the token is checked (defence in depth with SameSite=Strict)."""
    origin = request.headers.get("origin")
    if origin and origin != "null" and urlsplit(origin).netloc != request.url.netloc:
        raise Problem(403, "the request came from another site", type="csrf_failed")


async def _sent_token(request: Request) -> str:
    header = request.headers.get(CSRF_HEADER)
    if header:
        return header
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        # An upload streams its body to disk itself (api.uploads); parsing it here would read
        # the whole file first. Its form names the token in the action URL instead.
        return request.query_params.get(CSRF_FIELD, "")
    if content_type.startswith("application/x-www-form-urlencoded"):
        # Starlette keeps the parsed form on the request, so the route reads it again freely.
        value = (await request.form()).get(CSRF_FIELD)
        return value if isinstance(value, str) else ""
    return ""


async def csrf_checked(request: Request, viewer: Viewer) -> SignedIn:
    """Every state-changing dashboard route depends on this (a test walks the routes)."""
    same_origin(request)
    if not secrets.compare_digest(await _sent_token(request), viewer.csrf_token):
        raise Problem(
            403,
            "the form's security token is missing or stale; reload the page and try again",
            type="csrf_failed",
        )
    return viewer


#: A signed-in viewer whose request carried the session's CSRF token.
Changer = Annotated[SignedIn, Depends(csrf_checked)]


def writer(viewer: Changer) -> SignedIn:
    return _scoped(viewer, "write")


def admin(viewer: Changer) -> SignedIn:
    return _scoped(viewer, "admin")


#: State-changing routes take one of these: the CSRF check, then the scope.
Writer = Annotated[SignedIn, Depends(writer)]
Admin = Annotated[SignedIn, Depends(admin)]


#: Pages that show a form only a key with that scope may send (the composer, the admin pages).
WriteViewer = Annotated[SignedIn, Depends(require_write)]
AdminViewer = Annotated[SignedIn, Depends(require_admin)]
