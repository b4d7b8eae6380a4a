"""Projects and API keys: create, list, revoke, authenticate; used by the admin API and the CLI."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.db import new_id, utcnow
from core.keys import display_prefix, generate_key, hash_key
from core.tables import ApiKey, Project

#: `admin` manages the keys of its own project; `instance` manages projects and the keys of
#: every project (the key made on first start holds it). Each implies the ones before it.
SCOPES = ("read", "write", "admin", "instance")
PROJECT_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\- ]*$"
PROJECT_NAME_MAX = 200
KEY_NAME_MAX = 200


class AdminError(Exception):
    """A request the caller can correct; `kind` tells the API which status to answer."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind  # "not_found", "exists", "invalid"
        self.message = message


class KeyRejected(Exception):
    """The presented key does not authenticate; the message says why (unknown, revoked, expired)."""


def create_project(session: Session, *, name: str) -> Project:
    if not (1 <= len(name) <= PROJECT_NAME_MAX) or not re.match(PROJECT_NAME_PATTERN, name):
        raise AdminError(
            "invalid",
            f"project name {name!r}: 1-{PROJECT_NAME_MAX} letters, digits, '_', '.', '-' or "
            "spaces, starting with a letter or digit",
        )
    if session.scalar(select(Project.id).where(Project.name == name)) is not None:
        raise AdminError("exists", f"a project named {name!r} exists")
    project = Project(id=new_id("prj"), name=name)
    session.add(project)
    try:
        session.flush()
    except IntegrityError:  # created by a concurrent request since the check above
        raise AdminError("exists", f"a project named {name!r} exists") from None
    return project


def find_project(session: Session, name_or_id: str) -> Project:
    project = session.scalar(
        select(Project).where(or_(Project.id == name_or_id, Project.name == name_or_id))
    )
    if project is None:
        raise AdminError("not_found", f"project {name_or_id!r} was not found")
    return project


def active_key_counts(session: Session) -> dict[str, int]:
    """Keys per project that still authenticate (neither revoked nor expired)."""
    rows = session.execute(
        select(ApiKey.project_id, func.count())
        .where(
            ApiKey.revoked_at.is_(None),
            or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > utcnow()),
        )
        .group_by(ApiKey.project_id)
    ).all()
    return {project_id: count for project_id, count in rows}


def list_projects(session: Session) -> list[Project]:
    return list(session.scalars(select(Project).order_by(Project.name)))


def revoke_project(session: Session, project: Project) -> int:
    """Revoke every key of the project at once; its models, datasets and jobs are kept.

    Returns how many keys were revoked. A new key opens the project again.
    """
    result = session.execute(
        update(ApiKey)
        .where(ApiKey.project_id == project.id, ApiKey.revoked_at.is_(None))
        .values(revoked_at=utcnow())
        .execution_options(synchronize_session="fetch")
    )
    session.flush()
    return int(getattr(result, "rowcount", 0) or 0)


def create_key(
    session: Session,
    *,
    project_id: str,
    name: str,
    scopes: Sequence[str],
    expires_at: datetime | None = None,
    key: str | None = None,
) -> tuple[ApiKey, str]:
    """Returns the row and the plain key, which is never stored and shown only once."""
    if not (1 <= len(name) <= KEY_NAME_MAX):
        raise AdminError("invalid", f"a key name has 1-{KEY_NAME_MAX} characters")
    unknown = sorted(set(scopes) - set(SCOPES))
    if not scopes or unknown:
        raise AdminError(
            "invalid",
            f"scopes must be some of {', '.join(SCOPES)}"
            + (f"; unknown: {', '.join(unknown)}" if unknown else ""),
        )
    if expires_at is not None:
        if expires_at.tzinfo is None:
            raise AdminError("invalid", "expires_at needs a time zone (e.g. a trailing Z)")
        if expires_at <= utcnow():
            raise AdminError("invalid", "expires_at is in the past")
    if session.get(Project, project_id) is None:
        raise AdminError("not_found", f"project {project_id!r} was not found")
    plain = key or generate_key()
    row = ApiKey(
        id=new_id("key"),
        project_id=project_id,
        name=name,
        display_prefix=display_prefix(plain),
        key_hash=hash_key(plain),
        # Stored in a fixed order so listings read the same whatever order was asked for.
        scopes=[scope for scope in SCOPES if scope in scopes],
        expires_at=expires_at,
    )
    session.add(row)
    session.flush()
    return row, plain


def list_keys(session: Session, *, project_id: str | None = None) -> list[ApiKey]:
    query = select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)
    if project_id is not None:
        query = query.where(ApiKey.project_id == project_id)
    return list(session.scalars(query))


def find_key(session: Session, key_id: str) -> ApiKey:
    row = session.get(ApiKey, key_id)
    if row is None:
        raise AdminError("not_found", f"key {key_id!r} was not found")
    return row


def revoke_key(session: Session, key_id: str) -> ApiKey:
    """Revoking twice keeps the first revocation time."""
    row = find_key(session, key_id)
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        session.flush()
    return row


def authenticate(session: Session, token: str) -> ApiKey:
    # Looked up by the hash of what was sent: the secret itself is never compared, so the
    # time a lookup takes says nothing about how much of a guess was right.
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(token)))
    if row is None:
        raise KeyRejected("the API key is unknown")
    if row.revoked_at is not None:
        raise KeyRejected(f"the API key {row.display_prefix}… was revoked")
    if row.expires_at is not None and row.expires_at <= utcnow():
        raise KeyRejected(
            f"the API key {row.display_prefix}… expired at {row.expires_at:%Y-%m-%dT%H:%M:%SZ}"
        )
    return row
