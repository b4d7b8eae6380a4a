"""Jobs that go wrong on a real worker (Redis broker): over their time or memory limit,
canceled while stuck in a long step, or queued while Redis restarts and forgets them. The
worker survives each and runs the next job."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.integration.processes import Service, run_service, start_redis
from tests.integration.test_end_to_end import upload, wait_for_job, wait_for_stage
from tests.models.onnx_basic import make_mlp
from tests.ports import free_port

# Worker start-up imports torch: minutes on a busy small machine.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

FINAL = {"succeeded", "failed", "canceled"}
QUICK_BENCHMARK = {"batch_sizes": [1], "warmup": 1, "iterations": 5, "threads": 1}


class FaultService:
    """An API on its own redis-server, with a worker started only when a test needs one."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.port = free_port()
        self.redis = start_redis(tmp_path, self.port)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._service = run_service(
            tmp_path / "service",
            self.url,
            {
                # Short intervals so that each fault shows within seconds.
                "MODELPRESS_REAPER_INTERVAL_S": "0.5",
                "MODELPRESS_REQUEUE_AFTER_S": "2",
                "MODELPRESS_JOB_CANCEL_GRACE_S": "2",
            },
            with_worker=False,
        )
        self.service = next(self._service)

    def restart_redis(self) -> None:
        """A crash: the new server knows nothing of the old one's messages."""
        self.redis.stop(signal.SIGKILL)
        self.redis = start_redis(self.tmp_path, self.port)

    def worker(self) -> Service:
        proc = self.service.processes.get("worker")
        if proc is None or proc.popen.poll() is not None:
            self.service.start_worker()
        return self.service

    def close(self) -> None:
        self._service.close()
        self.redis.stop()


@pytest.fixture(scope="module")
def faults(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultService]:
    service = FaultService(tmp_path_factory.mktemp("job-faults"))
    try:
        yield service
    finally:
        service.close()


@pytest.fixture(scope="module")
def models(faults: FaultService, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("job-fault-models")
    with faults.service.client() as client:
        return {
            "small": upload(client, "/v1/models", make_mlp(folder / "small.onnx"))["id"],
            # Half a TFLOP per thousand runs at batch 1024: the warm-up runs of STUCK_BENCHMARK,
            # which report no progress, keep the job busy in one step for minutes even on a
            # fast machine, far longer than any test waits.
            "slow": upload(
                client,
                "/v1/models",
                make_mlp(folder / "slow.onnx", in_features=256, hidden=1024, classes=10),
            )["id"],
            # Its benchmark feeds at batch 4096 alone take 256 MB.
            "wide": upload(
                client, "/v1/models", make_mlp(folder / "wide.onnx", in_features=16384, hidden=8)
            )["id"],
        }


def _spec(model_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "model_id": model_id,
        "passes": [{"kind": "quantize", "method": "dynamic"}],
        "benchmark": QUICK_BENCHMARK,
        **extra,
    }


STUCK_BENCHMARK = {"batch_sizes": [1024], "warmup": 9_000, "iterations": 1, "threads": 1}


def _submit(client: httpx.Client, spec: dict[str, Any]) -> str:
    created = client.post("/v1/jobs", json=spec)
    assert created.status_code == 202, created.text
    return str(created.json()["id"])


def _seconds(job: dict[str, Any], start: str, end: str) -> float:
    return (datetime.fromisoformat(job[end]) - datetime.fromisoformat(job[start])).total_seconds()


def _assert_worker_alive(service: Service) -> None:
    assert service.processes["worker"].popen.poll() is None, service.dump_logs()


def test_queued_jobs_survive_a_redis_restart(faults: FaultService, models: dict[str, str]) -> None:
    service = faults.service
    worker = service.processes.get("worker")
    if worker is not None:  # run out of order: the jobs must wait with no worker to take them
        worker.stop()
        del service.processes["worker"]
    with service.client() as client:
        ids = [_submit(client, _spec(models["small"])) for _ in range(3)]
        assert redis.Redis.from_url(faults.url).llen("cpu") == 3

        faults.restart_redis()
        assert redis.Redis.from_url(faults.url).llen("cpu") == 0
        assert {client.get(f"/v1/jobs/{i}").json()["status"] for i in ids} == {"queued"}

        # The database still knows the jobs are queued: the worker's reaper sends them again.
        faults.worker()
        for job_id in ids:
            job = wait_for_job(service, client, job_id, FINAL, 180)
            assert job["status"] == "succeeded", job["error"]
            assert job["attempts"] == 1


def test_jobs_over_their_time_limit_fail_and_the_worker_runs_the_next(
    faults: FaultService, models: dict[str, str]
) -> None:
    service = faults.worker()
    with service.client() as client:
        # Reports progress while it benchmarks: stops by itself when asked at the soft limit.
        # 100 000 timed runs at batch 64 outlast 3 s on any machine.
        polite = _submit(
            client,
            _spec(
                models["slow"],
                benchmark={"batch_sizes": [64], "warmup": 0, "iterations": 100_000},
                limits={"soft_time_limit_s": 3, "hard_time_limit_s": 60},
            ),
        )
        # Stuck in its warm-up: killed at the hard limit.
        stuck = _submit(
            client,
            _spec(models["slow"], benchmark=STUCK_BENCHMARK, limits={"hard_time_limit_s": 6}),
        )
        after = _submit(client, _spec(models["small"]))

        stopped = wait_for_job(service, client, polite, FINAL, 120)
        assert stopped["status"] == "failed"
        assert stopped["error"]["type"] == "time_limit"
        assert "time limit of 3 s" in stopped["error"]["message"]
        assert _seconds(stopped, "started_at", "finished_at") < 30

        killed = wait_for_job(service, client, stuck, FINAL, 120)
        assert killed["status"] == "failed"
        assert killed["error"]["type"] == "time_limit"
        assert "hard time limit of 6 s" in killed["error"]["message"]
        assert "killed" in killed["error"]["message"]
        assert _seconds(killed, "started_at", "finished_at") < 30

        done = wait_for_job(service, client, after, FINAL, 120)
        assert done["status"] == "succeeded", done["error"]
    _assert_worker_alive(service)


def test_a_job_over_its_memory_limit_fails_and_the_worker_survives(
    faults: FaultService, models: dict[str, str]
) -> None:
    service = faults.worker()
    with service.client() as client:
        hungry = _submit(
            client,
            _spec(
                models["wide"],
                benchmark={"batch_sizes": [4096], "warmup": 1, "iterations": 2, "threads": 1},
                limits={"memory_limit_mb": 200},
            ),
        )
        after = _submit(client, _spec(models["small"]))
        failed = wait_for_job(service, client, hungry, FINAL, 120)
        assert failed["status"] == "failed"
        assert failed["error"]["type"] == "memory_limit"
        assert "memory limit of 200 MB" in failed["error"]["message"]
        done = wait_for_job(service, client, after, FINAL, 120)
        assert done["status"] == "succeeded", done["error"]
    _assert_worker_alive(service)


def test_cancel_stops_a_job_stuck_in_a_long_step_within_seconds(
    faults: FaultService, models: dict[str, str]
) -> None:
    service = faults.worker()
    with service.client() as client:
        stuck = _submit(client, _spec(models["slow"], benchmark=STUCK_BENCHMARK))
        after = _submit(client, _spec(models["small"]))
        wait_for_stage(service, client, stuck, "benchmarking")
        time.sleep(1)  # into the warm-up, where no progress report comes

        asked = time.monotonic()
        assert client.post(f"/v1/jobs/{stuck}/cancel").status_code == 202
        canceled = wait_for_job(service, client, stuck, FINAL, 60)
        assert time.monotonic() - asked < 15
        assert canceled["status"] == "canceled"
        assert "canceled by request during benchmarking" in canceled["error"]["message"]

        done = wait_for_job(service, client, after, FINAL, 120)
        assert done["status"] == "succeeded", done["error"]
    _assert_worker_alive(service)
