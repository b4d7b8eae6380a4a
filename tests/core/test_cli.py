"""`python -m core`: projects and keys made on the command line work against the API."""

from __future__ import annotations

import os
import subprocess
import sys

from fastapi.testclient import TestClient

from tests.api.test_commit_before_answer import refuse_commits_that_change


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "core", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def test_cli_creates_a_project_and_a_key_the_api_accepts(client: TestClient) -> None:
    created = cli("projects", "create", "team-cli")
    assert created.returncode == 0, created.stderr
    project_id, name = created.stdout.split()
    assert name == "team-cli"

    made = cli("keys", "create", "--project", "team-cli", "--scopes", "read", "--name", "ci")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert key.startswith("mpk_") and "shown only now" in made.stderr

    headers = {"Authorization": f"Bearer {key}"}
    assert client.get("/v1/models", headers=headers).status_code == 200
    refused = client.post("/v1/jobs", json={"model_id": "x", "passes": []}, headers=headers)
    assert refused.status_code == 403  # the read scope it was given, no more

    listed = cli("keys", "list", "--project", project_id)
    assert listed.returncode == 0, listed.stderr
    assert key[:10] in listed.stdout and key not in listed.stdout
    assert "read" in listed.stdout and "ci" in listed.stdout
    key_id = listed.stdout.split()[0]
    assert any(k["id"] == key_id for k in client.get("/v1/keys").json())

    projects = cli("projects", "list")
    assert f"{project_id}\tteam-cli\t1 active key(s)" in projects.stdout

    assert cli("keys", "revoke", key_id).returncode == 0
    answer = client.get("/v1/models", headers=headers)
    assert answer.status_code == 401 and "revoked" in answer.json()["detail"]


def test_cli_expiry_and_project_revocation(client: TestClient) -> None:
    assert cli("projects", "create", "temp").returncode == 0
    made = cli("keys", "create", "--project", "temp", "--expires-in-days", "2")
    key = made.stdout.strip()
    listed = client.get("/v1/keys").json()
    expires_at = next(k["expires_at"] for k in listed if key.startswith(k["prefix"]))
    assert expires_at is not None
    assert client.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200

    revoked = cli("projects", "revoke", "temp")
    assert revoked.returncode == 0 and "revoked 1 key(s)" in revoked.stderr
    assert client.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 401


def test_cli_refuses_bad_input_with_a_message(client: TestClient) -> None:
    unknown = cli("keys", "create", "--project", "nope")
    assert unknown.returncode == 1 and "project 'nope' was not found" in unknown.stderr
    bad_scope = cli("keys", "create", "--project", "default", "--scopes", "root")
    assert bad_scope.returncode == 2 and "read, write, admin" in bad_scope.stderr
    bad_name = cli("projects", "create", "a/b")
    assert bad_name.returncode == 1 and "project name" in bad_name.stderr
    assert [p["name"] for p in client.get("/v1/projects").json()] == ["default"]
    assert len(client.get("/v1/keys").json()) == 1


def test_cli_makes_project_admins_and_instance_keys(client: TestClient) -> None:
    assert cli("projects", "create", "team-ops").returncode == 0
    keys = {}
    for scope in ("admin", "instance"):
        made = cli("keys", "create", "--project", "team-ops", "--scopes", scope)
        assert made.returncode == 0, made.stderr
        keys[scope] = {"Authorization": f"Bearer {made.stdout.strip()}"}
    default = next(p for p in client.get("/v1/projects").json() if p["name"] == "default")
    for_default = {"project_id": default["id"], "name": "x", "scopes": ["read"]}

    assert (
        client.post("/v1/projects", json={"name": "p1"}, headers=keys["admin"]).status_code == 403
    )
    assert client.post("/v1/keys", json=for_default, headers=keys["admin"]).status_code == 403
    assert (
        client.post("/v1/projects", json={"name": "p2"}, headers=keys["instance"]).status_code
        == 201
    )
    assert client.post("/v1/keys", json=for_default, headers=keys["instance"]).status_code == 201


def test_cli_says_nothing_happened_when_the_database_refused_it(client: TestClient) -> None:
    project = client.post("/v1/projects", json={"name": "team-z"}).json()
    key = client.post("/v1/keys", json={"project_id": project["id"], "name": "ci"}).json()
    refuse_commits_that_change("api_keys", "UPDATE")
    refuse_commits_that_change("api_keys", "INSERT")

    revoke = cli("keys", "revoke", key["id"])
    assert revoke.returncode == 1 and "revoked" not in revoke.stderr
    assert "did not save" in revoke.stderr
    assert (
        client.get("/v1/models", headers={"Authorization": f"Bearer {key['key']}"}).status_code
        == 200
    )

    made = cli("keys", "create", "--project", "team-z")
    assert made.returncode == 1 and made.stdout == ""  # no key printed that does not exist
