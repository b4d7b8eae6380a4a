"""Dependencies every route uses: the database session and the caller's key."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.errors import Problem
from core.db import session_factory, utcnow
from core.keys import hash_key
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

_UNAUTHORIZED_HEADERS = {"WWW-Authenticate": 'Bearer realm="modelpress"'}


def current_key(request: Request, session: SessionDep) -> ApiKey:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Problem(
            401,
            "send your API key as 'Authorization: Bearer <key>'",
            type="unauthorized",
            headers=_UNAUTHORIZED_HEADERS,
        )
    key = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(token.strip())))
    if key is None or key.revoked_at is not None:
        raise Problem(
            401,
            "the API key is unknown or revoked",
            type="unauthorized",
            headers=_UNAUTHORIZED_HEADERS,
        )
    if key.expires_at is not None and key.expires_at <= utcnow():
        raise Problem(
            401, "the API key has expired", type="unauthorized", headers=_UNAUTHORIZED_HEADERS
        )
    return key


CurrentKey = Annotated[ApiKey, Depends(current_key)]


def require_scope(scope: str) -> Any:
    def check(key: CurrentKey) -> ApiKey:
        if scope not in key.scopes and "admin" not in key.scopes:
            raise Problem(403, f"this API key lacks the {scope!r} scope", type="forbidden")
        return key

    return Depends(check)


ReadKey = Annotated[ApiKey, require_scope("read")]
WriteKey = Annotated[ApiKey, require_scope("write")]
AdminKey = Annotated[ApiKey, require_scope("admin")]
