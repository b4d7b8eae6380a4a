"""Small helpers for API tests: uploads through the real multipart endpoint."""

from __future__ import annotations

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
