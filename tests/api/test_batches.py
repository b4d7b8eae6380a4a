"""Batches: many job specs submitted at once, checked together, followed and canceled as one
(no worker running; finished states are written the way a worker writes them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from core import jobstate
from core.db import session_factory
from core.jobspec import MAX_BATCH_JOBS
from core.tables import JobStatus
from tests.api.helpers import upload_model
from tests.models.onnx_basic import make_mlp


@pytest.fixture
def mlp(client: TestClient, tmp_path: Path) -> dict[str, Any]:
    return upload_model(client, make_mlp(tmp_path / "mlp.onnx"))


def _sweep(model_id: str) -> dict[str, Any]:
    passes = [
        {"kind": "quantize", "method": "dynamic"},
        {"kind": "quantize", "method": "dynamic", "per_channel": True},
        {"kind": "quantize", "method": "fp16"},
    ]
    return {
        "name": "methods sweep",
        "jobs": [{"model_id": model_id, "passes": [p]} for p in passes],
    }


def _finish(job_id: str, status: JobStatus) -> None:
    """What a worker does: claim the job, then end it."""
    with session_factory()() as session:
        attempt = jobstate.claim(session, job_id, "test-worker")
        assert attempt is not None
        error = {} if status == JobStatus.succeeded else {"error_type": "x", "error_message": "y"}
        assert jobstate.finish(session, job_id, attempt, status=status, **error)
        session.commit()


@pytest.mark.parametrize(
    "db_backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def test_batch_creates_one_job_per_spec_in_order(client: TestClient, mlp: dict[str, Any]) -> None:
    response = client.post("/v1/batches", json=_sweep(mlp["id"]))
    assert response.status_code == 202, response.text
    batch = response.json()
    assert response.headers["location"] == f"/v1/batches/{batch['id']}"
    assert batch["name"] == "methods sweep"
    assert batch["status"] == "queued"
    assert batch["total"] == 3 and batch["counts"]["queued"] == 3
    passes = [job["spec"]["passes"][0] for job in batch["jobs"]]
    # Each method's spec holds its own fields: fp16 has no per_channel.
    assert [(p["method"], p.get("per_channel")) for p in passes] == [
        ("dynamic", False),
        ("dynamic", True),
        ("fp16", None),
    ]
    assert {job["batch_id"] for job in batch["jobs"]} == {batch["id"]}

    assert client.get(f"/v1/batches/{batch['id']}").json()["jobs"] == batch["jobs"]
    # The jobs are ordinary jobs too.
    listed = {job["id"] for job in client.get("/v1/jobs").json()["items"]}
    assert listed == {job["id"] for job in batch["jobs"]}
    summaries = client.get("/v1/batches").json()["items"]
    assert [(b["id"], b["total"], b["status"]) for b in summaries] == [(batch["id"], 3, "queued")]


def _read(client: TestClient, url: str) -> dict[str, Any]:
    """The batch, checked against its summary: the same status and counts, without jobs."""
    batch = client.get(url).json()
    summary = client.get(f"{url}/summary").json()
    assert summary == {k: v for k, v in batch.items() if k != "jobs"}
    return batch


def test_batch_status_follows_its_jobs(client: TestClient, mlp: dict[str, Any]) -> None:
    batch = client.post("/v1/batches", json=_sweep(mlp["id"])).json()
    first, second, third = (job["id"] for job in batch["jobs"])
    url = f"/v1/batches/{batch['id']}"
    assert _read(client, url)["status"] == "queued"

    _finish(first, JobStatus.succeeded)
    assert _read(client, url)["status"] == "running"
    _finish(second, JobStatus.succeeded)
    _finish(third, JobStatus.succeeded)
    assert _read(client, url)["status"] == "succeeded"

    batch = client.post("/v1/batches", json=_sweep(mlp["id"])).json()
    for job, status in zip(batch["jobs"], [JobStatus.succeeded, JobStatus.failed], strict=False):
        _finish(job["id"], status)
    client.post(f"/v1/jobs/{batch['jobs'][2]['id']}/cancel")
    body = _read(client, f"/v1/batches/{batch['id']}")
    assert body["status"] == "failed"
    assert {k: v for k, v in body["counts"].items() if v} == {
        "succeeded": 1,
        "failed": 1,
        "canceled": 1,
    }


def test_one_bad_spec_refuses_the_whole_batch(client: TestClient, mlp: dict[str, Any]) -> None:
    sweep = _sweep(mlp["id"])
    sweep["jobs"][1]["model_id"] = "mdl_nope"
    response = client.post("/v1/batches", json=sweep)
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["loc"] == ["body", "jobs", 1, "model_id"]

    sweep = _sweep(mlp["id"])
    sweep["jobs"][2]["passes"][0]["method"] = "int3"
    response = client.post("/v1/batches", json=sweep)
    assert response.status_code == 422, response.text
    assert any(e["loc"][:3] == ["body", "jobs", 2] for e in response.json()["errors"])

    too_many = {"jobs": _sweep(mlp["id"])["jobs"][:1] * (MAX_BATCH_JOBS + 1)}
    assert client.post("/v1/batches", json=too_many).status_code == 422
    assert client.post("/v1/batches", json={"jobs": []}).status_code == 422

    assert client.get("/v1/batches").json()["items"] == []
    assert client.get("/v1/jobs").json()["items"] == []


def test_idempotency_key_returns_the_same_batch(client: TestClient, mlp: dict[str, Any]) -> None:
    headers = {"Idempotency-Key": "sweep-2026-11-29"}
    first = client.post("/v1/batches", json=_sweep(mlp["id"]), headers=headers)
    again = client.post("/v1/batches", json=_sweep(mlp["id"]), headers=headers)
    assert again.status_code == 202
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert again.json()["jobs"] == first.json()["jobs"]

    other = _sweep(mlp["id"])
    other["name"] = "another sweep"
    reused = client.post("/v1/batches", json=other, headers=headers)
    assert reused.status_code == 422
    assert reused.json()["type"].endswith("/idempotency_key_reused")
    assert len(client.get("/v1/jobs").json()["items"]) == 3


def test_cancel_stops_what_has_not_finished(client: TestClient, mlp: dict[str, Any]) -> None:
    batch = client.post("/v1/batches", json=_sweep(mlp["id"])).json()
    _finish(batch["jobs"][0]["id"], JobStatus.succeeded)

    response = client.post(f"/v1/batches/{batch['id']}/cancel")
    assert response.status_code == 202
    body = response.json()
    assert [job["status"] for job in body["jobs"]] == ["succeeded", "canceled", "canceled"]
    assert body["status"] == "canceled"
    # Nothing left to cancel: the same answer again.
    assert client.post(f"/v1/batches/{batch['id']}/cancel").json()["jobs"] == body["jobs"]
