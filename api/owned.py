"""The one lookup every resource route uses: a row of the caller's project, or a 404 that
does not tell whether the id exists in another project."""

from __future__ import annotations

from typing import TypeVar

from sqlalchemy.orm import Session

from api.errors import not_found
from core.tables import Artifact, Batch, Dataset, Job, StoredModel

OwnedRow = TypeVar("OwnedRow", StoredModel, Dataset, Job, Artifact, Batch)

#: How a 404 names each kind of resource.
_NOUNS: dict[type, str] = {
    StoredModel: "model",
    Dataset: "dataset",
    Job: "job",
    Artifact: "artifact",
    Batch: "batch",
}


def find_owned(
    session: Session, table: type[OwnedRow], resource_id: str, *, project_id: str
) -> OwnedRow | None:
    row = session.get(table, resource_id)
    return row if row is not None and row.project_id == project_id else None


def get_owned(
    session: Session, table: type[OwnedRow], resource_id: str, *, project_id: str
) -> OwnedRow:
    row = find_owned(session, table, resource_id, project_id=project_id)
    if row is None:
        raise not_found(_NOUNS[table], resource_id)
    return row
