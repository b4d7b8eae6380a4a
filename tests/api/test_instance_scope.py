"""An `admin` key is admin of its own project only; projects, and the keys of other
projects, need the `instance` scope that the first-start key holds."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient


def _key(client: TestClient, project_id: str, scopes: list[str]) -> dict[str, Any]:
    response = client.post(
        "/v1/keys", json={"project_id": project_id, "name": "+".join(scopes), "scopes": scopes}
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


def _as(client: TestClient, key: str) -> TestClient:
    other = TestClient(client.app)
    other.headers["Authorization"] = f"Bearer {key}"
    return other


@pytest.fixture
def teams(client: TestClient) -> dict[str, Any]:
    """Two projects, made by the first-start (instance) key, each with a project admin key
    and a key for CI."""
    made: dict[str, Any] = {}
    for name in ("team-a", "team-b"):
        project = client.post("/v1/projects", json={"name": name})
        assert project.status_code == 201, project.text
        project_id = project.json()["id"]
        made[name] = {
            "id": project_id,
            "admin": _as(client, _key(client, project_id, ["admin"])["key"]),
            "ci": _key(client, project_id, ["read", "write"]),
        }
    return made


def test_a_project_admin_manages_its_own_projects_keys(teams: dict[str, Any]) -> None:
    admin_a = teams["team-a"]["admin"]
    made = admin_a.post(
        "/v1/keys", json={"project_id": teams["team-a"]["id"], "name": "bot", "scopes": ["read"]}
    )
    assert made.status_code == 201, made.text
    assert _as(admin_a, made.json()["key"]).get("/v1/models").status_code == 200
    listed = admin_a.get("/v1/keys").json()
    assert {k["project_id"] for k in listed} == {teams["team-a"]["id"]}
    assert admin_a.delete(f"/v1/keys/{teams['team-a']['ci']['id']}").status_code == 200
    projects = admin_a.get("/v1/projects").json()
    assert [p["name"] for p in projects] == ["team-a"]


def test_a_project_admin_cannot_reach_other_projects_or_make_projects(
    client: TestClient, teams: dict[str, Any]
) -> None:
    admin_a = teams["team-a"]["admin"]
    b_id, b_ci = teams["team-b"]["id"], teams["team-b"]["ci"]
    refused = {
        "key for another project": admin_a.post(
            "/v1/keys", json={"project_id": b_id, "name": "mine-now", "scopes": ["admin"]}
        ),
        "new project": admin_a.post("/v1/projects", json={"name": "team-c"}),
        "revoke another project": admin_a.delete(f"/v1/projects/{b_id}"),
        "another project's keys": admin_a.get("/v1/keys", params={"project_id": b_id}),
        "grant instance": admin_a.post(
            "/v1/keys",
            json={"project_id": teams["team-a"]["id"], "name": "up", "scopes": ["instance"]},
        ),
    }
    for what, response in refused.items():
        assert response.status_code == 403, f"{what}: {response.text}"
        assert response.headers["content-type"] == "application/problem+json"
        assert "instance" in response.json()["detail"], what
    # Another project's key is not there for it, as any other project's resource.
    assert admin_a.delete(f"/v1/keys/{b_ci['id']}").status_code == 404

    # Nothing changed: team-b's key works, no project or key was added.
    assert _as(client, b_ci["key"]).get("/v1/models").status_code == 200
    assert sorted(p["name"] for p in client.get("/v1/projects").json()) == [
        "default",
        "team-a",
        "team-b",
    ]
    assert len(client.get("/v1/keys", params={"project_id": b_id}).json()) == 2


def test_a_project_admin_cannot_revoke_the_instance_key_of_its_project(
    client: TestClient,
) -> None:
    default = client.get("/v1/projects").json()[0]
    local_admin = _as(client, _key(client, default["id"], ["admin"])["key"])
    instance_key = next(k for k in client.get("/v1/keys").json() if "instance" in k["scopes"])
    answer = local_admin.delete(f"/v1/keys/{instance_key['id']}")
    assert answer.status_code == 403, answer.text
    assert client.get("/v1/projects").status_code == 200


def test_the_first_start_key_manages_every_project(
    client: TestClient, teams: dict[str, Any]
) -> None:
    bootstrap = next(k for k in client.get("/v1/keys").json() if k["name"] == "bootstrap admin")
    assert bootstrap["scopes"] == ["read", "write", "admin", "instance"]
    b_id = teams["team-b"]["id"]
    made = _key(client, b_id, ["read"])
    assert _as(client, made["key"]).get("/v1/models").status_code == 200
    assert {k["project_id"] for k in client.get("/v1/keys").json()} >= {
        teams["team-a"]["id"],
        b_id,
    }
    assert client.delete(f"/v1/keys/{teams['team-b']['ci']['id']}").status_code == 200
    assert client.delete(f"/v1/projects/{b_id}").status_code == 200
    # And it may hand the instance scope on.
    operator = _key(client, teams["team-a"]["id"], ["instance"])
    assert _as(client, operator["key"]).post("/v1/projects", json={"name": "x"}).status_code == 201
