"""/v1/artifacts: metadata and download of what jobs produced."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from api.deps import ReadKey, SessionDep, StorageDep
from api.downloads import download_response
from api.errors import not_found
from api.schemas import ArtifactOut
from core.tables import Artifact
from core.storage import Storage

router = APIRouter(prefix="/v1/artifacts", tags=["artifacts"])


def get_owned_artifact(session: SessionDep, project_id: str, artifact_id: str) -> Artifact:
    row = session.get(Artifact, artifact_id)
    if row is None or row.project_id != project_id:
        raise not_found("artifact", artifact_id)
    return row


@router.get("/{artifact_id}", response_model=ArtifactOut)
def get_artifact(artifact_id: str, key: ReadKey, session: SessionDep) -> ArtifactOut:
    return ArtifactOut.of(get_owned_artifact(session, key.project_id, artifact_id))


@router.get("/{artifact_id}/content", response_class=Response)
def download_artifact(
    artifact_id: str, request: Request, key: ReadKey, session: SessionDep, storage: StorageDep
) -> Response:
    return artifact_response(
        request, storage, get_owned_artifact(session, key.project_id, artifact_id)
    )


def artifact_response(request: Request, storage: Storage, row: Artifact) -> Response:
    """An artifact's content, with its ETag and Range support."""
    return download_response(
        request,
        storage,
        key=row.storage_key,
        size=row.size_bytes,
        sha256=row.sha256,
        filename=row.name,
        content_type=row.content_type,
    )
