"""What an admin request is told is what the database kept: the change is committed before
the answer is sent, and a commit the database refuses is an error, never a 200."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient
from httpx import Response
from sqlalchemy import text

from core.db import session_factory


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def admin(client: TestClient) -> Iterator[TestClient]:
    """The API as an HTTP client sees it: an error raised after the answer was sent does not
    reach the caller (as it would not over a real connection)."""
    with TestClient(client.app, raise_server_exceptions=False) as answering:
        answering.headers["Authorization"] = client.headers["Authorization"]
        yield answering


def refuse_commits_that_change(table: str, event: str) -> None:
    """From now on, a transaction that INSERTs or UPDATEs `table` passes every statement but
    fails at COMMIT: a trigger adds a row whose deferred foreign key can never be satisfied.
    A real database refusing a commit, as a serialization failure or a lost connection would."""
    with session_factory()() as session:
        dialect = session.get_bind().dialect.name
        session.execute(
            text(
                "CREATE TABLE IF NOT EXISTS commit_guard (project_id VARCHAR(40) "
                "REFERENCES projects (id) DEFERRABLE INITIALLY DEFERRED)"
            )
        )
        if dialect == "postgresql":
            session.execute(
                text(
                    "CREATE OR REPLACE FUNCTION refuse_commit() RETURNS trigger AS $$ BEGIN "
                    "INSERT INTO commit_guard VALUES ('prj_missing'); RETURN NULL; END $$ "
                    "LANGUAGE plpgsql"
                )
            )
            session.execute(
                text(
                    f"CREATE TRIGGER refuse_{table}_{event} AFTER {event} ON {table} "
                    "FOR EACH STATEMENT EXECUTE FUNCTION refuse_commit()"
                )
            )
        else:
            session.execute(
                text(
                    f"CREATE TRIGGER refuse_{table}_{event} AFTER {event} ON {table} "
                    "BEGIN INSERT INTO commit_guard VALUES ('prj_missing'); END"
                )
            )
        session.commit()


def _assert_refused(response: Response) -> None:
    assert response.status_code in (409, 503), response.text
    assert response.headers["content-type"] == "application/problem+json"


def _new_key(client: TestClient, project_id: str) -> dict[str, str]:
    created = client.post("/v1/keys", json={"project_id": project_id, "name": "ci"})
    assert created.status_code == 201, created.text
    return dict(created.json())


def test_a_revocation_the_database_refused_is_not_answered_200(admin: TestClient) -> None:
    project = admin.post("/v1/projects", json={"name": "team-r"}).json()
    key = _new_key(admin, project["id"])
    headers = {"Authorization": f"Bearer {key['key']}"}
    refuse_commits_that_change("api_keys", "UPDATE")

    _assert_refused(admin.delete(f"/v1/keys/{key['id']}"))
    # The answer was an error, and it was true: the key still works and is listed as active.
    assert admin.get("/v1/models", headers=headers).status_code == 200
    listed = {k["id"]: k for k in admin.get("/v1/keys").json()}
    assert listed[key["id"]]["revoked_at"] is None

    _assert_refused(admin.delete(f"/v1/projects/{project['id']}"))
    assert admin.get("/v1/models", headers=headers).status_code == 200


@pytest.mark.parametrize(
    ("table", "request_change"),
    [
        ("projects", lambda c, p: c.post("/v1/projects", json={"name": "team-new"})),
        ("api_keys", lambda c, p: c.post("/v1/keys", json={"project_id": p, "name": "x"})),
    ],
)
def test_a_creation_the_database_refused_is_not_answered_201(
    admin: TestClient, table: str, request_change: Callable[[TestClient, str], Response]
) -> None:
    project_id = admin.get("/v1/projects").json()[0]["id"]
    keys_before = admin.get("/v1/keys").json()
    refuse_commits_that_change(table, "INSERT")

    answer = request_change(admin, project_id)
    _assert_refused(answer)
    assert "key" not in answer.json()  # no secret handed out for a key that does not exist
    assert [p["name"] for p in admin.get("/v1/projects").json()] == ["default"]
    assert admin.get("/v1/keys").json() == keys_before
