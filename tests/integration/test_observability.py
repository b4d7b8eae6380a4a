"""What an operator sees of a running service (two API processes and a worker on one machine):
the Prometheus scrape after a job ran, and the JSON log lines of the request and the job."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.test_observability import samples, value
from tests.conftest import ADMIN_KEY
from tests.integration.processes import BIN, Service, run_service, start, wait_until
from tests.integration.test_end_to_end import upload, wait_for_job
from tests.models.onnx_basic import make_mlp
from tests.ports import free_port

#: The id the job's submission carries, to find its log line.
SUBMIT_REQUEST_ID = "submit-job-0001"


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    env = {
        "MODELPRESS_LOG_FORMAT": "json",
        # A heartbeat within any job's first moments.
        "MODELPRESS_HEARTBEAT_INTERVAL_S": "0.1",
        "MODELPRESS_WORKER_METRICS_PORT": str(free_port()),
    }
    yield from run_service(tmp_path_factory.mktemp("observed"), None, env)


@pytest.fixture(scope="module")
def second_api(service: Service) -> str:
    """Another API process of the same machine: same data folder, so the same metrics folder."""
    port = free_port()
    service.processes["api-2"] = start(
        "api-2",
        [str(BIN / "python"), "-m", "api"],
        {**service.env, "MODELPRESS_PORT": str(port)},
        service.logs,
    )
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: httpx.get(f"{url}/healthz").status_code == 200, 180, "the second API")
    return url


@pytest.fixture(scope="module")
def finished_job(service: Service, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("observed-job")
    with service.client() as client:
        model = upload(client, "/v1/models", make_mlp(folder / "mlp.onnx", hidden=64))
        created = client.post(
            "/v1/jobs",
            json={
                "model_id": model["id"],
                "passes": [{"kind": "quantize", "method": "dynamic"}],
                "benchmark": {"batch_sizes": [1], "warmup": 1, "iterations": 20},
            },
            headers={"X-Request-ID": SUBMIT_REQUEST_ID},
        )
        assert created.status_code == 202, created.text
        assert created.headers["x-request-id"] == SUBMIT_REQUEST_ID
        job = wait_for_job(service, client, created.json()["id"], {"succeeded", "failed"})
    assert job["status"] == "succeeded", f"{job['error']}\n{service.dump_logs()}"
    return {"job": job, "model": model}


def _scrape(url: str) -> dict[Any, float]:
    answer = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert answer.status_code == 200, answer.text
    return samples(answer.text)


def test_the_scrape_shows_the_job_a_worker_ran(
    service: Service, finished_job: dict[str, Any]
) -> None:
    scrape = _scrape(service.base_url)
    assert value(scrape, "modelpress_jobs", queue="cpu", status="succeeded") == 1
    assert value(scrape, "modelpress_queue_depth", queue="cpu") == 0
    assert (
        value(
            scrape,
            "modelpress_job_duration_seconds_count",
            queue="cpu",
            status="succeeded",
            passes="quantize",
        )
        == 1
    )
    pass_seconds = value(
        scrape, "modelpress_pass_duration_seconds_sum", kind="quantize", method="dynamic"
    )
    assert pass_seconds is not None and pass_seconds > 0
    assert value(scrape, "modelpress_job_queue_wait_seconds_count", queue="cpu") == 1
    # The worker's own heartbeat (busy or idle), named as GET /v1/workers names it.
    beats = {
        dict(labels)["worker"]: count
        for (name, labels), count in scrape.items()
        if name == "modelpress_worker_heartbeats_total"
    }
    assert len(beats) == 1, beats
    [(worker, count)] = beats.items()
    assert worker == f"worker@{socket.gethostname()}" and count >= 1
    last = value(scrape, "modelpress_worker_last_heartbeat_timestamp_seconds", worker=worker)
    assert last is not None and last > time.time() - 600
    assert (
        value(scrape, "modelpress_storage_bytes", kind="models")
        == (finished_job["model"]["size_bytes"])
    )
    stored = value(scrape, "modelpress_storage_bytes", kind="artifacts")
    assert stored is not None and stored > 0
    submitted = value(
        scrape,
        "modelpress_http_request_duration_seconds_count",
        method="POST",
        route="/v1/jobs",
        status_class="2xx",
    )
    assert submitted == 1


def test_every_api_process_counts_in_one_scrape(
    service: Service, second_api: str, finished_job: dict[str, Any]
) -> None:
    model_id = finished_job["model"]["id"]
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    # Each process answers a route of its own, and each one's scrape shows both.
    for _ in range(3):
        assert httpx.get(f"{second_api}/v1/models/{model_id}", headers=headers).status_code == 200
    for _ in range(2):
        assert httpx.get(f"{service.base_url}/v1/models", headers=headers).status_code == 200
    for url in (service.base_url, second_api):
        scrape = _scrape(url)
        by_route = {
            route: value(
                scrape,
                "modelpress_http_request_duration_seconds_count",
                method="GET",
                route=route,
                status_class="2xx",
            )
            for route in ("/v1/models/{model_id}", "/v1/models")
        }
        assert by_route == {"/v1/models/{model_id}": 3, "/v1/models": 2}, url


def test_the_worker_serves_its_machines_metrics(
    service: Service, finished_job: dict[str, Any]
) -> None:
    port = service.env["MODELPRESS_WORKER_METRICS_PORT"]
    scrape = samples(httpx.get(f"http://127.0.0.1:{port}/metrics").text)
    assert value(scrape, "modelpress_job_queue_wait_seconds_count", queue="cpu") == 1
    assert (
        value(
            scrape,
            "modelpress_job_duration_seconds_count",
            queue="cpu",
            status="succeeded",
            passes="quantize",
        )
        == 1
    )
    # The database's numbers are the API's to give: one scrape of them for the whole service.
    assert not any(name.startswith("modelpress_jobs") for name, _ in scrape)


def _json_lines(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]


def test_log_lines_are_json_with_the_request_and_job_ids(
    service: Service, finished_job: dict[str, Any]
) -> None:
    job_id = finished_job["job"]["id"]
    api_log = service.processes["api"].log
    # Every line the API wrote is one JSON object, uvicorn's own lines too.
    lines = api_log.read_text().splitlines()
    assert lines and all(line.startswith("{") for line in lines), lines[:5]
    records = _json_lines(api_log)
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    submit = [r for r in records if r.get("request_id") == SUBMIT_REQUEST_ID]
    access = [r for r in submit if r["logger"] == "modelpress.access"]
    assert len(access) == 1, submit
    assert access[0]["method"] == "POST"
    assert access[0]["route"] == "/v1/jobs"
    assert access[0]["status"] == 202
    assert access[0]["duration_ms"] > 0
    # A request's lines carry its own id, and different requests different ones.
    ids = [r["request_id"] for r in records if r["logger"] == "modelpress.access"]
    assert len(set(ids)) == len(ids)

    worker = _json_lines(service.processes["worker"].log)
    of_job = [r for r in worker if r.get("job_id") == job_id]
    assert any("attempt 1 started" in r["message"] for r in of_job), worker[-20:]
    assert any(r["message"].endswith("succeeded") for r in of_job), of_job
