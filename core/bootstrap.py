"""First start on an empty database: a default project and its key with every scope
(`instance` included: it manages every project)."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.admin import SCOPES, create_key
from core.db import new_id
from core.keys import is_well_formed
from core.tables import ApiKey, Project

DEFAULT_PROJECT = "default"


def ensure_admin_key(session: Session, bootstrap_key: str | None) -> str | None:
    """Create the first project and its instance key when there is no key at all.

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
            scopes=SCOPES,
            key=bootstrap_key,
        )
        session.commit()
    except IntegrityError:  # another API replica bootstrapped at the same moment
        session.rollback()
        return None
    return None if bootstrap_key else plain
