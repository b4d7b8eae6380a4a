"""What a user sees when a job cannot run, and when the worker running it dies."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.integration.processes import Service
from tests.integration.test_end_to_end import upload, wait_for_job, wait_for_stage
from tests.models.onnx_basic import make_mlp

# A worker start and two runs of a long benchmark: many minutes on a busy small machine.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def test_job_that_no_worker_can_run_waits_and_says_why(
    redis_service: Service, tmp_path: Path
) -> None:
    model_path = make_mlp(tmp_path / "mlp.onnx")
    with redis_service.client() as client:
        model = upload(client, "/v1/models", model_path)
        spec = {
            "model_id": model["id"],
            "passes": [{"kind": "quantize", "method": "dynamic"}],
            # This machine has no GPU: its worker refused the gpu queue at start.
            "benchmark": {"device": "cuda"},
        }
        job = client.post("/v1/jobs", json=spec).json()
        assert job["queue"] == "gpu"
        assert job["waiting_for"]["reason"] == "no live worker serves the 'gpu' queue"
        canceled = client.post(f"/v1/jobs/{job['id']}/cancel").json()
        assert canceled["status"] == "canceled" and canceled["waiting_for"] is None
        assert canceled["attempts"] == 0
        assert client.get(f"/v1/jobs/{job['id']}/artifacts").json() == []


def test_killed_worker_is_detected_and_the_job_retried(
    embedded_service: Service, tmp_path: Path
) -> None:
    model_path = make_mlp(tmp_path / "mlp.onnx", in_features=256, hidden=1024, classes=10)
    with embedded_service.client() as client:
        model = upload(client, "/v1/models", model_path)
        spec = {
            "model_id": model["id"],
            "passes": [{"kind": "quantize", "method": "dynamic"}],
            "benchmark": {"batch_sizes": [1], "warmup": 1, "iterations": 10_000},
        }
        job = client.post("/v1/jobs", json=spec).json()
        wait_for_stage(embedded_service, client, job["id"], "benchmarking")

        # The worker and its pool process die at once, with no chance to clean up.
        embedded_service.processes["worker"].stop(signal.SIGKILL)
        assert client.get(f"/v1/jobs/{job['id']}").json()["status"] == "running"

        # The embedded broker forgets a message its consumer died holding: the database's job
        # state is what brings the job back. A new worker notices the silent job, re-queues
        # it, and runs it to the end.
        # The timeout is short enough for a quick test and long enough that the new attempt's
        # own heartbeats (every 2 s) are never taken for silence on a busy 2-core machine.
        embedded_service.env["MODELPRESS_HEARTBEAT_TIMEOUT_S"] = "30"
        embedded_service.env["MODELPRESS_REAPER_INTERVAL_S"] = "0.5"
        embedded_service.start_worker("worker2")
        done = wait_for_job(embedded_service, client, job["id"], {"succeeded", "failed"}, 600)
        assert done["status"] == "succeeded", done["error"]
        assert done["attempts"] == 2
