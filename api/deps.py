"""Dependencies every route uses: the database session and the caller's key."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Header, Request
from sqlalchemy.orm import Session

from api.errors import Problem
from api.middleware import STATE_KEY
from core.db import session_factory
from core.models import ApiKey
from core.settings import Settings, get_settings
from core.storage import Storage, get_storage


def get_session() -> Iterator[Session]:
    """Commits when the request succeeds, rolls back when it raises; services only flush."""
    session = session_factory()()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
StorageDep = Annotated[Storage, Depends(get_storage)]
IdempotencyKey = Annotated[
    str | None,
    Header(
        max_length=255,
        description="A retry with the same key returns the same resource instead of a new one; "
        "the same key with a different body is a 422.",
    ),
]


async def current_key(request: Request) -> ApiKey:
    """The key `api.middleware.RequestGuard` authenticated before the body was read: no
    database session, so a route holds none unless it asks for one (a stream waits without)."""
    key: ApiKey | None = request.scope.get("state", {}).get(STATE_KEY)
    if key is None:  # only routes outside /v1 are public, and they take no key
        raise Problem(401, "this route needs an API key", type="unauthorized")
    return key


CurrentKey = Annotated[ApiKey, Depends(current_key)]


def _check_scope(key: ApiKey, scope: str) -> ApiKey:
    if scope not in key.scopes and "admin" not in key.scopes:
        raise Problem(403, f"this API key lacks the {scope!r} scope", type="forbidden")
    return key


# One named function per scope, so a route's scope can be read from its dependencies
# (tests walk every route and check what each scope may do).
def require_read(key: CurrentKey) -> ApiKey:
    return _check_scope(key, "read")


def require_write(key: CurrentKey) -> ApiKey:
    return _check_scope(key, "write")


def require_admin(key: CurrentKey) -> ApiKey:
    return _check_scope(key, "admin")


#: Every resource route takes one of these; the key's `project_id` is the only project
#: whose rows the route may read or change.
ReadKey = Annotated[ApiKey, Depends(require_read)]
WriteKey = Annotated[ApiKey, Depends(require_write)]
#: Admin routes manage projects and keys across the whole service.
AdminKey = Annotated[ApiKey, Depends(require_admin)]
