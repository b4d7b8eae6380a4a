"""Small helpers for API tests: uploads through the real multipart endpoint."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient


def upload_model(client: TestClient, path: Path, **headers: str) -> dict[str, Any]:
    with path.open("rb") as handle:
        response = client.post("/v1/models", files={"file": (path.name, handle)}, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()


def upload_dataset(client: TestClient, path: Path, **fields: str) -> dict[str, Any]:
    with path.open("rb") as handle:
        response = client.post(
            "/v1/datasets", files={"file": (path.name, handle)}, data=fields or None
        )
    assert response.status_code == 201, response.text
    return response.json()


def store_report(
    project_id: str,
    job_id: str,
    content: bytes,
    folder: Path,
    *,
    kind: str = "report",
    name: str = "report.json",
) -> str:
    """What a worker leaves when a job succeeds: a report artifact (or another JSON artifact),
    in storage and in the database. Returns the artifact's id."""
    from core.db import new_id, session_factory
    from core.storage import get_storage
    from core.tables import Artifact

    path = folder / name
    path.write_bytes(content)
    artifact_id = new_id("art")
    storage_key = f"{project_id}/jobs/{job_id}/{name}"
    get_storage().put_file(storage_key, path)
    with session_factory()() as session:
        session.add(
            Artifact(
                id=artifact_id,
                project_id=project_id,
                job_id=job_id,
                kind=kind,
                name=name,
                content_type="application/json",
                sha256=hashlib.sha256(content).hexdigest(),
                size_bytes=len(content),
                storage_key=storage_key,
            )
        )
        session.commit()
    return artifact_id
