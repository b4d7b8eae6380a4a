"""Workers as a user and an operator see them: GET /v1/workers lists each worker with its
queues, cores and device; a job whose queue no worker serves says so and is not sent again
and again; a worker pinned to a core runs its jobs there; a worker without a usable GPU
refuses the `gpu` queue. Real processes throughout: redis-server, the API, Celery workers."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.integration.processes import Service, run_service, wait_until
from tests.integration.test_end_to_end import upload, wait_for_job, wait_for_stage
from tests.models.onnx_basic import make_mlp

pytestmark = [pytest.mark.timeout(900)]

REDIS_DB = 7
#: A job sent this long ago and not claimed is due to be sent again, checked this often: a
#: job held back wrongly would be sent several times a second.
REQUEUE_AFTER_S = 1.0
REAPER_INTERVAL_S = 0.3


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, redis_server: str) -> Iterator[Service]:
    """An API and one worker started for `cpu,gpu` (like `make run`) on this GPU-less machine,
    pinned to core 0."""
    yield from run_service(
        tmp_path_factory.mktemp("fleet"),
        f"{redis_server}/{REDIS_DB}",
        {
            "MODELPRESS_REQUEUE_AFTER_S": str(REQUEUE_AFTER_S),
            "MODELPRESS_REAPER_INTERVAL_S": str(REAPER_INTERVAL_S),
            "MODELPRESS_CPUS": "0",
        },
    )


def _workers(client: httpx.Client) -> list[dict[str, Any]]:
    response = client.get("/v1/workers")
    assert response.status_code == 200, response.text
    return list(response.json())


def _database(service: Service) -> Path:
    return Path(service.env["MODELPRESS_DATA_DIR"]) / "modelpress.db"


def _sent_at(service: Service, job_id: str) -> str | None:
    with sqlite3.connect(_database(service)) as conn:
        row = conn.execute("SELECT sent_at FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return None if row is None else row[0]


def _messages_in(queue: str, service: Service) -> int:
    return int(redis.Redis.from_url(service.env["MODELPRESS_BROKER_URL"]).llen(queue))


def _spec(model_id: str, **benchmark: Any) -> dict[str, Any]:
    return {
        "model_id": model_id,
        "passes": [{"kind": "quantize", "method": "dynamic"}],
        "benchmark": {"batch_sizes": [1], "warmup": 1, "iterations": 5, **benchmark},
    }


def test_a_worker_lists_itself_with_its_queues_cores_and_device(fleet: Service) -> None:
    with fleet.client() as client:
        wait_until(lambda: _workers(client), 30, "the worker's row")
        (worker,) = _workers(client)
        assert worker["state"] == "live"
        assert worker["queues"] == ["cpu"]
        assert worker["cores"] == [0]
        # The CPU model is part of the hardware class a cached trial result is tied to.
        assert worker["device"]["kind"] == "cpu" and worker["device"]["cpu_model"]
        assert "CUDAExecutionProvider" in worker["refused"]["gpu"]
        assert worker["versions"]["modelpress"]
        assert worker["busy"] is False and worker["current_job_id"] is None
        assert worker["name"].startswith("worker@")
    # One clear line says why, and the worker goes on serving its other queue.
    refusals = [
        line for line in fleet.processes["worker"].output().splitlines() if "refuses" in line
    ]
    assert len(refusals) == 1, refusals
    assert "'gpu'" in refusals[0] and "CUDAExecutionProvider" in refusals[0]
    assert "WARNING" in refusals[0]  # the worker runs: a warning, not an error


def test_a_gpu_job_waits_for_a_gpu_worker_and_is_not_sent_again_and_again(
    fleet: Service, tmp_path: Path
) -> None:
    with fleet.client() as client:
        model = upload(client, "/v1/models", make_mlp(tmp_path / "mlp.onnx"))
        response = client.post("/v1/jobs", json=_spec(model["id"], device="cuda"))
        assert response.status_code == 202, response.text
        job = response.json()
        assert job["queue"] == "gpu"
        assert job["waiting_for"] == {
            "queue": "gpu",
            "reason": "no live worker serves the 'gpu' queue",
        }
        sent = _sent_at(fleet, job["id"])
        assert sent is not None and _messages_in("gpu", fleet) == 1

        # Many times the re-send interval: a job re-sent while it waits would be sent again
        # on every reaper pass.
        time.sleep(8 * (REQUEUE_AFTER_S + REAPER_INTERVAL_S))
        assert _messages_in("gpu", fleet) == 1
        assert _sent_at(fleet, job["id"]) == sent

        shown = client.get(f"/v1/jobs/{job['id']}").json()
        assert shown["status"] == "queued" and shown["attempts"] == 0
        assert shown["waiting_for"]["queue"] == "gpu"
        listed = {j["id"]: j for j in client.get("/v1/jobs").json()["items"]}
        assert listed[job["id"]]["waiting_for"]["queue"] == "gpu"


def test_a_cpu_job_runs_past_a_waiting_gpu_job_on_the_workers_core(
    fleet: Service, tmp_path: Path
) -> None:
    with fleet.client() as client:
        model = upload(client, "/v1/models", make_mlp(tmp_path / "mlp.onnx"))
        gpu_job = client.post("/v1/jobs", json=_spec(model["id"], device="cuda")).json()
        job = client.post("/v1/jobs", json=_spec(model["id"])).json()
        assert job["waiting_for"] is None
        done = wait_for_job(fleet, client, job["id"], {"succeeded", "failed"}, 300)
        assert done["status"] == "succeeded", done["error"]
        environment = done["result"]["metrics"]["environment"]
        assert environment["cores"] == [0]
        assert environment["threads"] == 1
        assert environment["torch_threads"] == 1
        assert environment["device"] == "cpu"
        assert environment["execution_provider"] == "CPUExecutionProvider"
        # The cpu worker never took the gpu job.
        waiting = client.get(f"/v1/jobs/{gpu_job['id']}").json()
        assert waiting["status"] == "queued" and waiting["attempts"] == 0


def test_a_busy_worker_shows_its_job_to_that_jobs_project_only(
    fleet: Service, tmp_path: Path
) -> None:
    with fleet.client() as client:
        model_path = make_mlp(tmp_path / "mlp.onnx", in_features=32, hidden=256, classes=10)
        model = upload(client, "/v1/models", model_path)
        job = client.post("/v1/jobs", json=_spec(model["id"], iterations=100_000)).json()
        wait_for_stage(fleet, client, job["id"], "benchmarking")
        wait_until(lambda: _workers(client)[0]["current_job_id"] == job["id"], 30, "current job")
        assert _workers(client)[0]["busy"] is True

        project = client.post("/v1/projects", json={"name": "other-team"}).json()
        created = client.post(
            "/v1/keys", json={"project_id": project["id"], "name": "ops", "scopes": ["admin"]}
        ).json()
        other = httpx.Client(
            base_url=fleet.base_url, headers={"Authorization": f"Bearer {created['key']}"}
        )
        reader = client.post(
            "/v1/keys", json={"project_id": project["id"], "name": "ci", "scopes": ["read"]}
        ).json()
        with other:
            (seen,) = _workers(other)
            assert seen["busy"] is True and seen["current_job_id"] is None
            forbidden = other.get(
                "/v1/workers", headers={"Authorization": f"Bearer {reader['key']}"}
            )
            assert forbidden.status_code == 403
            assert forbidden.headers["content-type"] == "application/problem+json"

        client.post(f"/v1/jobs/{job['id']}/cancel")
        wait_for_job(fleet, client, job["id"], {"canceled"}, 60)
        wait_until(lambda: not _workers(client)[0]["busy"], 30, "the worker to be idle")


def test_a_worker_started_only_for_gpu_without_a_gpu_refuses_to_start(fleet: Service) -> None:
    done = subprocess.run(
        fleet.worker_command("gpu-only", "gpu"),
        env=fleet.env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 69, done.stdout + done.stderr
    assert "refuses it: its GPU check failed" in done.stderr
    assert "CUDAExecutionProvider" in done.stderr
    with fleet.client() as client:
        assert not [w for w in _workers(client) if w["name"].startswith("gpu-only@")]


@pytest.mark.parametrize(
    ("cpus", "message"),
    [
        ("63", "names core(s) 63 that this worker may not run on"),
        ("0-x", "is not a core list"),
    ],
)
def test_a_worker_with_invalid_cores_refuses_to_start(
    fleet: Service, cpus: str, message: str
) -> None:
    done = subprocess.run(
        fleet.worker_command("bad-cores", "cpu"),
        env={**fleet.env, "MODELPRESS_CPUS": cpus},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0
    assert message in done.stdout + done.stderr
    assert "MODELPRESS_CPUS" in done.stdout + done.stderr


def test_a_worker_that_stops_cleanly_is_listed_as_stopped(fleet: Service, tmp_path: Path) -> None:
    fleet.processes["worker"].stop(signal.SIGTERM)
    with fleet.client() as client:
        (worker,) = _workers(client)
        assert worker["state"] == "stopped" and worker["stopped_at"] is not None
        model = upload(client, "/v1/models", make_mlp(tmp_path / "mlp.onnx"))
        job = client.post("/v1/jobs", json=_spec(model["id"])).json()
        assert job["waiting_for"] == {
            "queue": "cpu",
            "reason": "no live worker serves the 'cpu' queue",
        }
