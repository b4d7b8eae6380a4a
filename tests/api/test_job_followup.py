"""Following a job: its event stream, its report, and a retry when it failed (no worker
running; state changes and artifacts are written the way a worker writes them)."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from core import jobstate
from core.db import session_factory
from core.settings import get_settings
from core.tables import JobStatus
from tests.api.helpers import store_report, upload_model
from tests.models.onnx_basic import make_mlp


@pytest.fixture
def job(client: TestClient, tmp_path: Path) -> dict[str, Any]:
    model = upload_model(client, make_mlp(tmp_path / "mlp.onnx"))
    spec = {
        "model_id": model["id"],
        "passes": [{"kind": "quantize", "method": "dynamic", "per_channel": True}],
        "benchmark": {"batch_sizes": [1], "iterations": 20},
    }
    response = client.post("/v1/jobs", json=spec)
    assert response.status_code == 202, response.text
    return dict(response.json())


def _claim(job_id: str) -> int:
    with session_factory()() as session:
        attempt = jobstate.claim(session, job_id, "test-worker")
        session.commit()
    assert attempt is not None
    return attempt


def _progress(job_id: str, attempt: int, stage: str, fraction: float) -> None:
    with session_factory()() as session:
        assert jobstate.report_progress(
            session, job_id, attempt, stage=stage, progress=fraction, message=stage
        )
        session.commit()


def _finish(job_id: str, attempt: int, status: JobStatus) -> None:
    error = {} if status == JobStatus.succeeded else {"error_type": "oom", "error_message": "out"}
    with session_factory()() as session:
        assert jobstate.finish(session, job_id, attempt, status=status, **error)
        session.commit()


def _events(client: TestClient, job_id: str) -> list[dict[str, Any]]:
    with client.stream("GET", f"/v1/jobs/{job_id}/events") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = list(response.iter_lines())
    events = [json.loads(line[len("data: ") :]) for line in lines if line.startswith("data: ")]
    assert lines.count("event: job") == len(events)
    return events


def test_retry_runs_a_failed_job_again_as_a_new_job(
    client: TestClient, job: dict[str, Any]
) -> None:
    early = client.post(f"/v1/jobs/{job['id']}/retry")
    assert early.status_code == 409
    assert early.json()["type"].endswith("/job_not_retryable")

    _finish(job["id"], _claim(job["id"]), JobStatus.failed)
    response = client.post(f"/v1/jobs/{job['id']}/retry")
    assert response.status_code == 202, response.text
    retry = response.json()
    assert response.headers["location"] == f"/v1/jobs/{retry['id']}"
    assert retry["id"] != job["id"]
    assert retry["retry_of"] == job["id"]
    assert retry["status"] == "queued" and retry["attempts"] == 0
    assert retry["spec"] == job["spec"]
    # The failed job keeps its error; both are listed.
    old = client.get(f"/v1/jobs/{job['id']}").json()
    assert old["status"] == "failed" and old["error"]["type"] == "oom"
    assert len(client.get("/v1/jobs").json()["items"]) == 2


def test_retry_of_a_job_whose_model_was_deleted_says_why(
    client: TestClient, job: dict[str, Any]
) -> None:
    client.post(f"/v1/jobs/{job['id']}/cancel")
    assert client.delete(f"/v1/models/{job['model_id']}").status_code == 204
    response = client.post(f"/v1/jobs/{job['id']}/retry")
    assert response.status_code == 409
    assert "model" in response.json()["detail"]
    assert len(client.get("/v1/jobs").json()["items"]) == 1


def test_events_of_a_finished_job_are_its_final_state(
    client: TestClient, job: dict[str, Any]
) -> None:
    _finish(job["id"], _claim(job["id"]), JobStatus.succeeded)
    events = _events(client, job["id"])
    assert [e["status"] for e in events] == ["succeeded"]
    assert events[0]["id"] == job["id"]


def test_events_follow_a_running_job_to_its_end(
    client: TestClient, job: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Time for every change below even on a busy machine; the stream ends with the job.
    monkeypatch.setenv("MODELPRESS_EVENTS_STREAM_S", "120")
    get_settings.cache_clear()

    def worker() -> None:
        time.sleep(1.0)
        attempt = _claim(job["id"])
        for stage, fraction in [("quantizing", 0.3), ("benchmarking", 0.7)]:
            time.sleep(1.0)
            _progress(job["id"], attempt, stage, fraction)
        time.sleep(1.0)
        _finish(job["id"], attempt, JobStatus.succeeded)

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        events = _events(client, job["id"])
    finally:
        thread.join()
    path = [
        ("queued", None),
        ("running", "loading"),
        ("running", "quantizing"),
        ("running", "benchmarking"),
        ("succeeded", "done"),
    ]
    seen = [(e["status"], e["stage"]) for e in events]
    # In order, each change once, to the final state; a busy machine may poll past a change
    # that lasted only a second, never past the end.
    assert seen == [state for state in path if state in seen], seen
    assert seen[-1] == ("succeeded", "done") and len(seen) >= 3, seen
    assert events[-1]["progress"]["fraction"] == 1.0


def test_events_of_a_job_that_does_not_move_end_after_the_stream_limit(
    client: TestClient, job: dict[str, Any]
) -> None:
    # MODELPRESS_EVENTS_STREAM_S is 2 s in tests; a client reconnects for more.
    events = _events(client, job["id"])
    assert [e["status"] for e in events] == ["queued"]


def test_report_of_a_succeeded_job(client: TestClient, job: dict[str, Any], tmp_path: Path) -> None:
    missing = client.get(f"/v1/jobs/{job['id']}/report")
    assert missing.status_code == 404
    assert missing.json()["type"].endswith("/no_report")
    assert "queued" in missing.json()["detail"]

    attempt = _claim(job["id"])
    report = {"job_id": job["id"], "metrics": {"comparison": {"speedup": {"8": 1.9}}}}
    content = json.dumps(report).encode()
    project_id = client.get("/v1/projects").json()[0]["id"]
    store_report(project_id, job["id"], content, tmp_path)
    _finish(job["id"], attempt, JobStatus.succeeded)

    response = client.get(f"/v1/jobs/{job['id']}/report")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == report
    assert response.headers["etag"] == f'"{hashlib.sha256(content).hexdigest()}"'


def test_a_running_job_being_stopped_is_canceling_and_only_that_spelling_filters(
    client: TestClient, job: dict[str, Any]
) -> None:
    _claim(job["id"])
    stopping = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert stopping.status_code == 202
    assert stopping.json()["status"] == "canceling"
    listed = client.get("/v1/jobs", params={"status": "canceling"}).json()["items"]
    assert [j["id"] for j in listed] == [job["id"]]
    old_spelling = client.get("/v1/jobs", params={"status": "cancelling"})
    assert old_spelling.status_code == 422
    assert old_spelling.json()["type"].endswith("/invalid_request")


def test_provenance_of_a_succeeded_job_is_its_projects_alone(
    client: TestClient, job: dict[str, Any], tmp_path: Path
) -> None:
    missing = client.get(f"/v1/jobs/{job['id']}/provenance")
    assert missing.status_code == 404
    assert missing.json()["type"].endswith("/no_provenance")
    assert "queued" in missing.json()["detail"]

    attempt = _claim(job["id"])
    manifest = {"job_id": job["id"], "inputs": {"model": {"sha256": "0" * 64}}}
    content = json.dumps(manifest).encode()
    project_id = client.get("/v1/projects").json()[0]["id"]
    store_report(
        project_id, job["id"], content, tmp_path, kind="provenance", name="provenance.json"
    )
    _finish(job["id"], attempt, JobStatus.succeeded)

    response = client.get(f"/v1/jobs/{job['id']}/provenance")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == manifest
    assert response.headers["etag"] == f'"{hashlib.sha256(content).hexdigest()}"'
    # The report route serves the report, not the manifest.
    assert client.get(f"/v1/jobs/{job['id']}/report").json()["type"].endswith("/no_report")

    other = client.post("/v1/projects", json={"name": "elsewhere"}).json()
    key = client.post(
        "/v1/keys", json={"project_id": other["id"], "name": "reader", "scopes": ["read"]}
    ).json()["key"]
    foreign = client.get(
        f"/v1/jobs/{job['id']}/provenance", headers={"Authorization": f"Bearer {key}"}
    )
    assert foreign.status_code == 404
    assert foreign.json()["type"].endswith("/not_found")
    assert "sha256" not in foreign.text
