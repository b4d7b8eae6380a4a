"""A batch submitted while Redis is down: the request answers without waiting on the broker
once per job, nothing is lost, and when Redis is back every job reaches the broker once."""

from __future__ import annotations

import base64
import json
import signal
from pathlib import Path

import pytest
import redis

from core.db import reset_engines
from core.queue import get_celery
from core.settings import get_settings
from tests.integration.processes import run_service, start_redis
from tests.integration.test_end_to_end import upload
from tests.models.onnx_basic import make_mlp
from tests.ports import free_port
from worker.reaper import reap_once

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

JOBS = 12


def _job_ids_in_broker(url: str, queue: str) -> list[str]:
    """The job id each message in a Redis queue carries (Celery's message protocol 2)."""
    ids = []
    for raw in redis.Redis.from_url(url).lrange(queue, 0, -1):
        message = json.loads(raw)
        args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        ids.append(args[0])
    return ids


def _use_service_settings(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    """This process reads the service's database and broker, as a worker's reaper does."""
    for name in ("MODELPRESS_DATA_DIR", "MODELPRESS_BROKER_URL"):
        monkeypatch.setenv(name, env[name])
    monkeypatch.delenv("MODELPRESS_DATABASE_URL", raising=False)
    get_settings.cache_clear()
    get_celery.cache_clear()
    reset_engines()


def test_a_batch_submitted_while_redis_is_down_reaches_it_once_when_it_is_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    broker = start_redis(tmp_path, port)
    service_run = run_service(tmp_path / "service", url, with_worker=False)
    service = next(service_run)
    try:
        with service.client() as client:
            model = upload(client, "/v1/models", make_mlp(tmp_path / "mlp.onnx"))
            spec = {"model_id": model["id"], "passes": [{"kind": "quantize", "method": "dynamic"}]}

            broker.stop(signal.SIGKILL)
            answer = client.post("/v1/batches", json={"jobs": [spec] * JOBS})
            assert answer.status_code == 202, answer.text
            jobs = answer.json()["jobs"]
            ids = sorted(job["id"] for job in jobs)
            assert len(ids) == JOBS
            assert {job["status"] for job in jobs} == {"queued"}
            assert all("broker is unreachable" in job["progress"]["message"] for job in jobs)
            listed = client.get(answer.headers["Location"]).json()
            assert {job["status"] for job in listed["jobs"]} == {"queued"}

            # Redis comes back empty (it keeps nothing on disk). One pass of the reaper that
            # every worker runs sends each job, and a second pass sends nothing more.
            broker = start_redis(tmp_path, port)
            assert _job_ids_in_broker(url, "cpu") == []
            _use_service_settings(monkeypatch, service.env)
            assert sorted(reap_once(get_settings())) == ids
            assert reap_once(get_settings()) == []
            assert sorted(_job_ids_in_broker(url, "cpu")) == ids
            states = {client.get(f"/v1/jobs/{job_id}").json()["status"] for job_id in ids}
            assert states == {"queued"}
    finally:
        service_run.close()
        broker.stop()
        get_settings.cache_clear()
        get_celery.cache_clear()
        reset_engines()
