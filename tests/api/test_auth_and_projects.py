"""Keys and projects: every request needs a key, and a key sees only its own project."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from httpx import Response
from sqlalchemy import text

from core.db import session_factory
from core.keys import is_well_formed
from core.tables import ApiKey
from tests.api.helpers import upload_dataset, upload_model
from tests.models.onnx_basic import make_dataset, make_mlp


def test_requests_without_a_valid_key_are_401(client: TestClient) -> None:
    for headers in (
        {"Authorization": ""},
        {"Authorization": "Bearer mpk_wrong"},
        {"Authorization": "Basic abc"},
    ):
        response = client.get("/v1/models", headers=headers)
        assert response.status_code == 401
        assert response.headers["content-type"] == "application/problem+json"
        assert response.headers["www-authenticate"].startswith("Bearer")


def _second_project_client(client: TestClient) -> tuple[TestClient, str]:
    project = client.post("/v1/projects", json={"name": "team-b"}).json()
    created = client.post(
        "/v1/keys", json={"project_id": project["id"], "name": "ci", "scopes": ["read", "write"]}
    )
    assert created.status_code == 201
    body = created.json()
    assert body["key"].startswith("mpk_") and body["prefix"] == body["key"][:10]
    other = TestClient(client.app)
    other.headers["Authorization"] = f"Bearer {body['key']}"
    return other, body["id"]


def test_another_projects_key_gets_404_everywhere(client: TestClient, tmp_path: Path) -> None:
    model_path = make_mlp(tmp_path / "m.onnx")
    model = upload_model(client, model_path)
    dataset = upload_dataset(client, make_dataset(tmp_path / "d.npz", model_path))
    job = client.post(
        "/v1/jobs",
        json={"model_id": model["id"], "passes": [{"kind": "quantize", "method": "dynamic"}]},
    ).json()
    other, _ = _second_project_client(client)

    for url in (
        f"/v1/models/{model['id']}",
        f"/v1/models/{model['id']}/content",
        f"/v1/datasets/{dataset['id']}",
        f"/v1/jobs/{job['id']}",
        f"/v1/jobs/{job['id']}/artifacts",
    ):
        assert other.get(url).status_code == 404, url
    assert other.post(f"/v1/jobs/{job['id']}/cancel").status_code == 404
    assert other.delete(f"/v1/models/{model['id']}").status_code == 404
    assert other.get("/v1/models").json()["items"] == []
    assert other.get("/v1/jobs").json()["items"] == []
    # Nor can it use the other project's model in a job.
    spec = {"model_id": model["id"], "passes": [{"kind": "quantize", "method": "dynamic"}]}
    assert other.post("/v1/jobs", json=spec).status_code == 422
    # And the owner still sees everything.
    assert client.get(f"/v1/jobs/{job['id']}").json()["status"] == "queued"


def test_scopes_and_revocation(client: TestClient) -> None:
    other, key_id = _second_project_client(client)
    assert other.get("/v1/keys").status_code == 403  # not an admin key
    assert other.get("/v1/models").status_code == 200
    revoked = client.delete(f"/v1/keys/{key_id}")
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    assert other.get("/v1/models").status_code == 401


def test_read_only_key_cannot_write(client: TestClient) -> None:
    project = client.get("/v1/projects").json()[0]
    key = client.post(
        "/v1/keys", json={"project_id": project["id"], "name": "viewer", "scopes": ["read"]}
    ).json()["key"]
    response = client.post(
        "/v1/jobs",
        json={"model_id": "x", "passes": [{"kind": "quantize", "method": "dynamic"}]},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert response.status_code == 403
    assert "write" in response.json()["detail"]


def _key(client: TestClient, project_id: str, **fields: Any) -> dict[str, Any]:
    response = client.post("/v1/keys", json={"project_id": project_id, "name": "k", **fields})
    assert response.status_code == 201, response.text
    return dict(response.json())


def _get_models(client: TestClient, key: str) -> Response:
    return client.get("/v1/models", headers={"Authorization": f"Bearer {key}"})


def test_unknown_revoked_and_expired_keys_each_say_why(client: TestClient) -> None:
    project = client.post("/v1/projects", json={"name": "team-c"}).json()
    unknown = _get_models(client, "mpk_" + "a" * 38)
    assert unknown.status_code == 401 and "unknown" in unknown.json()["detail"]

    revoked = _key(client, project["id"])
    client.delete(f"/v1/keys/{revoked['id']}")
    answer = _get_models(client, revoked["key"])
    assert answer.status_code == 401 and "revoked" in answer.json()["detail"]

    soon = datetime.now(UTC) + timedelta(hours=1)
    expiring = _key(client, project["id"], expires_at=soon.isoformat())
    assert _get_models(client, expiring["key"]).status_code == 200
    with session_factory()() as session:  # an hour later
        session.get_one(ApiKey, expiring["id"]).expires_at = datetime.now(UTC) - timedelta(1)
        session.commit()
    answer = _get_models(client, expiring["key"])
    assert answer.status_code == 401 and "expired" in answer.json()["detail"]
    assert answer.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"expires_at": "2020-01-01T00:00:00Z"}, "in the past"),
        ({"expires_at": "2999-01-01T00:00:00"}, "time zone"),
        ({"scopes": ["root"]}, "scopes"),
        ({"scopes": []}, "scopes"),
    ],
)
def test_bad_key_requests_are_422(client: TestClient, fields: dict[str, Any], message: str) -> None:
    project = client.get("/v1/projects").json()[0]
    response = client.post("/v1/keys", json={"project_id": project["id"], "name": "k", **fields})
    assert response.status_code == 422, response.text
    assert message in response.json()["detail"]
    assert len(client.get("/v1/keys").json()) == 1  # only the bootstrap key


def test_a_key_is_shown_once_and_stored_only_as_a_hash(client: TestClient) -> None:
    project = client.get("/v1/projects").json()[0]
    created = _key(client, project["id"], scopes=["read"])
    plain = created["key"]
    assert is_well_formed(plain)
    listing = client.get("/v1/keys", params={"project_id": project["id"]})
    assert plain not in listing.text and plain[10:] not in listing.text
    assert created["id"] in listing.text
    with session_factory()() as session:
        stored = [tuple(row) for row in session.execute(text("SELECT * FROM api_keys"))]
    assert not any(plain in str(value) for row in stored for value in row)


def test_revoking_a_project_revokes_its_keys_and_keeps_its_data(
    client: TestClient, tmp_path: Path
) -> None:
    other, _ = _second_project_client(client)
    model = upload_model(other, make_mlp(tmp_path / "m.onnx"))
    project = next(p for p in client.get("/v1/projects").json() if p["name"] == "team-b")
    assert project["active_keys"] == 1

    revoked = client.delete(f"/v1/projects/{project['id']}")
    assert revoked.status_code == 200 and revoked.json()["active_keys"] == 0
    assert other.get("/v1/models").status_code == 401

    # A new key opens the project again, with its model still there.
    fresh = _key(client, project["id"], scopes=["read"])
    models = _get_models(client, fresh["key"]).json()["items"]
    assert [m["id"] for m in models] == [model["id"]]

    own = next(p for p in client.get("/v1/projects").json() if p["name"] == "default")
    assert client.delete(f"/v1/projects/{own['id']}").status_code == 409
    assert client.get("/v1/projects").status_code == 200  # the admin key still works
    assert client.delete("/v1/projects/prj_nope").status_code == 404
    assert client.post("/v1/projects", json={"name": "team-b"}).status_code == 409
