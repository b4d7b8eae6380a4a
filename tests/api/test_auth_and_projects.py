"""Keys and projects: every request needs a key, and a key sees only its own project."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from tests.api.helpers import upload_dataset, upload_model
from tests.factories import make_dataset, make_mlp


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
