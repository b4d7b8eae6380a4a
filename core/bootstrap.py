"""First start on an empty database: a default project and its admin key."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.db import new_id
from core.keys import display_prefix, generate_key, hash_key, is_well_formed
from core.models import ApiKey, Project

DEFAULT_PROJECT = "default"
ALL_SCOPES = ["read", "write", "admin"]


def create_key(
    session: Session, *, project_id: str, name: str, scopes: list[str], key: str | None = None
) -> tuple[ApiKey, str]:
    """Returns the row and the plain key, which is never stored and shown only once."""
    plain = key or generate_key()
    row = ApiKey(
        id=new_id("key"),
        project_id=project_id,
        name=name,
        display_prefix=display_prefix(plain),
        key_hash=hash_key(plain),
        scopes=scopes,
    )
    session.add(row)
    session.flush()
    return row, plain


def ensure_admin_key(session: Session, bootstrap_key: str | None) -> str | None:
    """Create the first project and admin key when there is no key at all.

    Returns the plain key when one was generated (so the caller can print it once).
    """
    if session.scalar(select(func.count()).select_from(ApiKey)):
        return None
    if bootstrap_key is not None and not is_well_formed(bootstrap_key) and len(bootstrap_key) < 16:
        raise ValueError("MODELPRESS_BOOTSTRAP_KEY must be at least 16 characters")
    try:
        project = session.scalar(select(Project).where(Project.name == DEFAULT_PROJECT))
        if project is None:
            project = Project(id=new_id("prj"), name=DEFAULT_PROJECT)
            session.add(project)
            session.flush()
        _, plain = create_key(
            session,
            project_id=project.id,
            name="bootstrap admin",
            scopes=ALL_SCOPES,
            key=bootstrap_key,
        )
        session.commit()
    except IntegrityError:  # another API replica bootstrapped at the same moment
        session.rollback()
        return None
    return None if bootstrap_key else plain
