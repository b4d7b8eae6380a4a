"""Dashboard sign-ins, kept in the database: the browser holds only a random token (in an
HttpOnly cookie), the row holds its hash and the key it stands for. Signing out, revoking
the key or leaving the session idle ends it for every API process at once."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete
from sqlalchemy.orm import Session

from core.db import utcnow
from core.settings import Settings
from core.tables import ApiKey, WebSession

#: The cookie that carries a session's token.
COOKIE = "mp_session"
#: last_seen_at is written at most this often: a page that polls every two seconds would
#: otherwise write a row every two seconds.
_TOUCH_EVERY = timedelta(seconds=60)


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class SignIn:
    key: ApiKey
    csrf_token: str
    token_hash: str


def start(session: Session, key: ApiKey) -> str:
    """A new session for `key`; returns the token for the cookie (never stored)."""
    token = secrets.token_urlsafe(32)
    session.add(
        WebSession(token_hash=_hash(token), key_id=key.id, csrf_token=secrets.token_urlsafe(32))
    )
    session.flush()
    return token


def resume(session: Session, token: str, settings: Settings) -> SignIn | None:
    """The session behind a cookie's token, or None when there is none, it has been idle or
    open too long, or its key was revoked or expired since (the row is then removed)."""
    row = session.get(WebSession, _hash(token))
    if row is None:
        return None
    now = utcnow()
    key = session.get(ApiKey, row.key_id)
    idle_since = now - row.last_seen_at
    if (
        key is None
        or key.revoked_at is not None
        or (key.expires_at is not None and key.expires_at <= now)
        or idle_since > timedelta(minutes=settings.web_session_idle_minutes)
        or now - row.created_at > timedelta(hours=settings.web_session_max_hours)
    ):
        session.delete(row)
        return None
    if idle_since > _TOUCH_EVERY:
        row.last_seen_at = now
    return SignIn(key=key, csrf_token=row.csrf_token, token_hash=row.token_hash)


def end(session: Session, token_hash: str) -> None:
    session.execute(delete(WebSession).where(WebSession.token_hash == token_hash))
