"""What a status read shows is the database's state at that moment: the work saved per read
(the spec's defaults computed once per stored spec, the live queues read only for queued
jobs, reads without a transaction) hides no change from the next read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from api.schemas import JobOut
from core import jobstate
from core.db import session_factory, session_scope
from core.tables import Job, JobStatus
from tests.api.helpers import upload_model
from tests.api.test_workers import _worker
from tests.models.onnx_basic import make_mlp
from tests.web.jobs_data import WORKER_RESULTS

both_databases = pytest.mark.parametrize(
    "db_backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)


@pytest.fixture
def model_id(client: TestClient, tmp_path: Path) -> str:
    return str(upload_model(client, make_mlp(tmp_path / "mlp.onnx"))["id"])


def _submit(client: TestClient, spec: dict[str, Any]) -> str:
    response = client.post("/v1/jobs", json=spec)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def _quantize(model_id: str, **benchmark: Any) -> dict[str, Any]:
    return {
        "model_id": model_id,
        "passes": [{"kind": "quantize", "method": "dynamic"}],
        "benchmark": benchmark,
    }


def _read(client: TestClient, job_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The job as its own read and as the list shows it."""
    alone = client.get(f"/v1/jobs/{job_id}").json()
    listed = {job["id"]: job for job in client.get("/v1/jobs").json()["items"]}
    return alone, listed[job_id]


@both_databases
def test_every_change_of_a_job_shows_on_the_next_read(client: TestClient, model_id: str) -> None:
    job_id = _submit(client, _quantize(model_id))
    for shown in _read(client, job_id):
        assert shown["status"] == "queued"
        assert shown["waiting_for"]["queue"] == "cpu"  # no worker at all

    worker = _worker(["cpu"])
    for shown in _read(client, job_id):
        assert shown["status"] == "queued" and shown["waiting_for"] is None

    with session_scope() as session:
        attempt = jobstate.claim(session, job_id, "host1:4242", worker_id=worker)
    for shown in _read(client, job_id):
        assert shown["status"] == "running" and shown["worker"] == "host1:4242"
        assert shown["attempts"] == 1 and shown["started_at"] is not None

    recorded = WORKER_RESULTS["faster"]["result"]
    with session_scope() as session:
        assert attempt is not None
        assert jobstate.finish(
            session, job_id, attempt, status=JobStatus.succeeded, result=recorded
        )
    for shown in _read(client, job_id):
        assert shown["status"] == "succeeded" and shown["finished_at"] is not None
        assert shown["summary"]["verdict"] == recorded["metrics"]["comparison"]["verdict"]
        assert shown["result"]["metrics"]["comparison"] == recorded["metrics"]["comparison"]


@both_databases
def test_a_page_says_why_each_queued_job_waits_wherever_it_is_on_the_page(
    client: TestClient, model_id: str
) -> None:
    _worker(["cpu"])
    gpu_job = _submit(client, _quantize(model_id, device="cuda"))
    cpu_job = _submit(client, _quantize(model_id))
    running = _submit(client, _quantize(model_id))
    with session_scope() as session:
        assert jobstate.claim(session, running, "host1:4242") == 1

    page = {job["id"]: job for job in client.get("/v1/jobs").json()["items"]}
    # Newest first: the running job leads the page, the queued ones follow it.
    assert list(page) == [running, cpu_job, gpu_job]
    assert page[running]["waiting_for"] is None
    assert page[cpu_job]["waiting_for"] is None
    assert page[gpu_job]["waiting_for"] == {
        "queue": "gpu",
        "reason": "no live worker serves the 'gpu' queue",
    }
    queued = client.get("/v1/jobs", params={"status": "queued"}).json()["items"]
    assert {job["id"]: job["waiting_for"] is not None for job in queued} == {
        cpu_job: False,
        gpu_job: True,
    }


def test_each_job_shows_its_own_spec_with_its_defaults(client: TestClient, model_id: str) -> None:
    first = _submit(client, _quantize(model_id, iterations=20))
    second = _submit(client, {**_quantize(model_id), "labels": {"n": 2}})
    for _ in range(3):  # the same stored specs, read again and again
        one, two = (client.get(f"/v1/jobs/{job}").json() for job in (first, second))
        assert one["spec"]["benchmark"]["iterations"] == 20
        assert two["spec"]["benchmark"]["iterations"] == 100  # the default, filled in
        assert one["labels"] is None and two["labels"] == {"n": 2}
        assert two["spec"]["labels"] == {"n": 2}
        for shown in (one, two):
            assert shown["spec"]["passes"][0]["scope"] == "full"  # a default, filled in


def test_specs_stored_by_older_versions_are_shown_as_today(
    client: TestClient, model_id: str
) -> None:
    upgraded = _submit(client, _quantize(model_id))
    unreadable = _submit(client, _quantize(model_id))
    version_1 = {
        "model_id": model_id,
        "passes": [{"kind": "quantize", "method": "dynamic", "weights_only": True}],
    }
    # A shape no version knows (a pass kind since removed): shown as it is stored.
    odd = {"model_id": model_id, "passes": [{"kind": "retired_pass"}], "spec_version": 2}
    with session_scope() as session:
        session.execute(update(Job).where(Job.id == upgraded).values(spec=version_1))
        session.execute(update(Job).where(Job.id == unreadable).values(spec=odd))
    for _ in range(2):
        shown = client.get(f"/v1/jobs/{upgraded}").json()["spec"]
        assert shown["spec_version"] == 2
        assert shown["passes"][0]["method"] == "int8_weight_only"
        assert "weights_only" not in shown["passes"][0]
        assert client.get(f"/v1/jobs/{unreadable}").json()["spec"] == odd


def test_answers_share_no_spec(client: TestClient, model_id: str) -> None:
    """Two answers built from the same stored spec hold copies of their own: code that
    changes one answer (a page that fills in a form from it) cannot change the next."""
    job_id = _submit(client, _quantize(model_id))
    with session_factory()() as session:
        row = session.get_one(Job, job_id)
        first = JobOut.of(row)
        first.spec["passes"][0]["method"] = "fp16"
        first.spec["benchmark"]["batch_sizes"].append(64)
        second = JobOut.of(row)
    assert second.spec["passes"][0]["method"] == "dynamic"
    assert second.spec["benchmark"]["batch_sizes"] == [1, 8]
