"""/v1/artifacts: metadata and download of what jobs produced."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from api.deps import ReadKey, SessionDep, StorageDep
from api.downloads import stored_file_response
from api.owned import get_owned
from api.schemas import ArtifactOut
from core.tables import Artifact

router = APIRouter(prefix="/v1/artifacts", tags=["artifacts"])


@router.get("/{artifact_id}", response_model=ArtifactOut)
def get_artifact(artifact_id: str, key: ReadKey, session: SessionDep) -> ArtifactOut:
    return ArtifactOut.of(get_owned(session, Artifact, artifact_id, project_id=key.project_id))


@router.get("/{artifact_id}/content", response_class=Response)
def download_artifact(
    artifact_id: str, request: Request, key: ReadKey, session: SessionDep, storage: StorageDep
) -> Response:
    row = get_owned(session, Artifact, artifact_id, project_id=key.project_id)
    return stored_file_response(request, storage, row)
