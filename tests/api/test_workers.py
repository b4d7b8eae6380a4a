"""GET /v1/workers and a job's `waiting_for`, over HTTP, with worker rows written the way a
starting worker writes its own (core.workers); the real worker processes are in
tests/integration/test_workers.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from core import jobstate, workers
from core.db import new_id, session_scope
from core.dbclock import db_utcnow
from core.tables import Worker
from core.workers import Registration
from tests.api.helpers import upload_model
from tests.models.onnx_basic import make_mlp

both_databases = pytest.mark.parametrize(
    "db_backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)


def _worker(queues: list[str], **values: Any) -> str:
    registration = Registration(
        **{
            "id": new_id("wkr"),
            "name": f"{'-'.join(queues)}@host1",
            "host": "host1",
            "pid": 4242,
            "queues": queues,
            "refused": {},
            "cores": [0, 1],
            "device": {"kind": "cpu"},
            "versions": {"modelpress": "0.1.0"},
            **values,
        }
    )
    with session_scope() as session:
        workers.register(session, registration)
    return registration.id


def _silent_for(worker_id: str, seconds: float) -> None:
    with session_scope() as session:
        session.execute(
            update(Worker).where(Worker.id == worker_id).values(heartbeat_at=db_utcnow(-seconds))
        )


def _job(client: TestClient, tmp_path: Path, device: str = "cuda") -> dict[str, Any]:
    model = upload_model(client, make_mlp(tmp_path / "mlp.onnx"))
    spec = {
        "model_id": model["id"],
        "passes": [{"kind": "quantize", "method": "dynamic"}],
        "benchmark": {"device": device},
    }
    response = client.post("/v1/jobs", json=spec)
    assert response.status_code == 202, response.text
    return dict(response.json())


@both_databases
def test_live_stopped_and_dead_workers_are_listed_as_such(client: TestClient) -> None:
    live = _worker(["cpu"])
    dead = _worker(["gpu"], device={"kind": "cuda", "name": "NVIDIA H200"})
    _silent_for(dead, 120)  # past the 60 s heartbeat timeout
    stopped = _worker(["cpu"])
    with session_scope() as session:
        workers.retire(session, stopped)
    forgotten = _worker(["cpu"])
    _silent_for(forgotten, 7200)  # past MODELPRESS_WORKER_HISTORY_S

    listed = {w["id"]: w for w in client.get("/v1/workers").json()}

    assert set(listed) == {live, dead, stopped}
    assert listed[live]["state"] == "live" and listed[live]["queues"] == ["cpu"]
    assert listed[live]["cores"] == [0, 1] and listed[live]["busy"] is False
    assert listed[dead]["state"] == "dead" and listed[dead]["seconds_since_heartbeat"] >= 119
    assert listed[dead]["device"]["name"] == "NVIDIA H200"
    assert listed[stopped]["state"] == "stopped" and listed[stopped]["stopped_at"]


def test_workers_are_for_admin_keys(client: TestClient) -> None:
    created = client.post(
        "/v1/keys", json={"project_id": _project_of(client), "name": "ci", "scopes": ["write"]}
    ).json()
    response = client.get("/v1/workers", headers={"Authorization": f"Bearer {created['key']}"})
    assert response.status_code == 403
    assert response.json()["type"].endswith("/forbidden")


def _project_of(client: TestClient) -> str:
    return str(client.get("/v1/projects").json()[0]["id"])


def test_a_busy_worker_names_its_job_only_to_that_jobs_project(
    client: TestClient, tmp_path: Path
) -> None:
    worker_id = _worker(["cpu"])
    job = _job(client, tmp_path, device="cpu")
    with session_scope() as session:
        assert jobstate.claim(session, job["id"], "host1:1", worker_id=worker_id) == 1
    with session_scope() as session:
        assert workers.beat(session, worker_id)

    (mine,) = client.get("/v1/workers").json()
    assert mine["busy"] is True and mine["current_job_id"] == job["id"]

    other = client.post("/v1/projects", json={"name": "other-team"}).json()
    key = client.post(
        "/v1/keys", json={"project_id": other["id"], "name": "ops", "scopes": ["admin"]}
    ).json()["key"]
    (theirs,) = client.get("/v1/workers", headers={"Authorization": f"Bearer {key}"}).json()
    assert theirs["busy"] is True and theirs["current_job_id"] is None


@both_databases
def test_a_job_waits_for_a_worker_of_its_queue_and_stops_waiting_when_one_is_live(
    client: TestClient, tmp_path: Path
) -> None:
    _worker(["cpu"])
    job = _job(client, tmp_path)
    reason = {"queue": "gpu", "reason": "no live worker serves the 'gpu' queue"}
    assert job["waiting_for"] == reason
    assert client.get(f"/v1/jobs/{job['id']}").json()["waiting_for"] == reason
    (listed,) = client.get("/v1/jobs").json()["items"]
    assert listed["waiting_for"] == reason

    gpu = _worker(["gpu"], device={"kind": "cuda", "name": "NVIDIA H200"})
    assert client.get(f"/v1/jobs/{job['id']}").json()["waiting_for"] is None

    _silent_for(gpu, 120)  # its heartbeat stopped: the job waits again
    assert client.get(f"/v1/jobs/{job['id']}").json()["waiting_for"] == reason


def test_a_running_job_waits_for_nothing(client: TestClient, tmp_path: Path) -> None:
    job = _job(client, tmp_path, device="cpu")
    assert job["waiting_for"]["queue"] == "cpu"  # no worker at all yet
    with session_scope() as session:
        jobstate.claim(session, job["id"], "host1:1")
    assert client.get(f"/v1/jobs/{job['id']}").json()["waiting_for"] is None


def test_batches_and_event_streams_say_why_a_job_waits(client: TestClient, tmp_path: Path) -> None:
    _worker(["cpu"])
    model = upload_model(client, make_mlp(tmp_path / "mlp.onnx"))
    spec = {
        "model_id": model["id"],
        "passes": [{"kind": "quantize", "method": "dynamic"}],
        "benchmark": {"device": "cuda"},
    }
    response = client.post("/v1/batches", json={"jobs": [spec, {**spec, "benchmark": {}}]})
    assert response.status_code == 202, response.text
    gpu_job, cpu_job = response.json()["jobs"]
    assert gpu_job["waiting_for"]["queue"] == "gpu" and cpu_job["waiting_for"] is None
    batch = client.get(f"/v1/batches/{response.json()['id']}").json()
    assert batch["jobs"][0]["waiting_for"]["queue"] == "gpu"

    with client.stream("GET", f"/v1/jobs/{gpu_job['id']}/events") as events:
        first = next(line for line in events.iter_lines() if line.startswith("data: "))
    assert '"waiting_for":{"queue":"gpu"' in first.replace(" ", "")
