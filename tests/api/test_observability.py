"""What an operator sees of the service: the Prometheus scrape and who may read it, the
request id on every answer, and a readiness check that names the dependency that is down."""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from fastapi.testclient import TestClient
from moto.server import ThreadedMotoServer
from prometheus_client.parser import text_string_to_metric_families

from core.db import reset_engines
from core.queue import get_celery
from core.settings import get_settings
from tests.api.helpers import upload_dataset, upload_model
from tests.integration.processes import start_redis
from tests.models.onnx_basic import make_dataset, make_mlp
from tests.ports import free_port


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a scrape by (name, labels)."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(scrape: dict[Any, float], name: str, **labels: str) -> float | None:
    return scrape.get((name, frozenset(labels.items())))


def _as(client: TestClient, key: str | None) -> TestClient:
    other = TestClient(client.app)
    if key is not None:
        other.headers["Authorization"] = f"Bearer {key}"
    return other


def _new_key(client: TestClient, scopes: list[str]) -> str:
    project_id = next(p["id"] for p in client.get("/v1/projects").json() if p["name"] == "default")
    made = client.post(
        "/v1/keys", json={"project_id": project_id, "name": "+".join(scopes), "scopes": scopes}
    )
    assert made.status_code == 201, made.text
    return str(made.json()["key"])


def test_only_an_instance_key_may_scrape_metrics(client: TestClient) -> None:
    anonymous = _as(client, None).get("/metrics")
    assert anonymous.status_code == 401
    assert anonymous.headers["content-type"] == "application/problem+json"
    assert anonymous.headers["www-authenticate"].startswith("Bearer")
    assert "modelpress_" not in anonymous.text

    for scopes in (["read"], ["read", "write"], ["admin"]):
        refused = _as(client, _new_key(client, scopes)).get("/metrics")
        assert refused.status_code == 403, (scopes, refused.text)
        assert "instance" in refused.json()["detail"]

    scraped = client.get("/metrics")  # the first-start key holds `instance`
    assert scraped.status_code == 200, scraped.text
    assert scraped.headers["content-type"].startswith("text/plain")
    assert value(samples(scraped.text), "modelpress_database_metrics_up") == 1
    # The OpenAPI document says so too: /metrics takes the Bearer key, /healthz does not.
    paths = client.get("/openapi.json").json()["paths"]
    assert "security" not in paths["/metrics"]["get"]
    assert paths["/healthz"]["get"]["security"] == []


@pytest.mark.parametrize(
    "db_backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def test_metrics_count_jobs_queues_and_stored_bytes(client: TestClient, tmp_path: Path) -> None:
    model_path = make_mlp(tmp_path / "m.onnx")
    model = upload_model(client, model_path)
    dataset = upload_dataset(client, make_dataset(tmp_path / "d.npz", model_path))
    for _ in range(2):
        job = client.post(
            "/v1/jobs",
            json={"model_id": model["id"], "passes": [{"kind": "quantize", "method": "dynamic"}]},
        )
        assert job.status_code == 202, job.text
    canceled = client.post(f"/v1/jobs/{job.json()['id']}/cancel")
    assert canceled.status_code in (200, 202), canceled.text

    scrape = samples(client.get("/metrics").text)
    assert value(scrape, "modelpress_jobs", queue="cpu", status="queued") == 1
    assert value(scrape, "modelpress_jobs", queue="cpu", status="canceled") == 1
    assert value(scrape, "modelpress_jobs", queue="gpu", status="queued") == 0
    assert value(scrape, "modelpress_queue_depth", queue="cpu") == 1
    assert value(scrape, "modelpress_queue_depth", queue="gpu") == 0
    waited = value(scrape, "modelpress_queue_oldest_wait_seconds", queue="cpu")
    assert waited is not None and waited >= 0
    assert value(scrape, "modelpress_queue_oldest_wait_seconds", queue="gpu") == 0
    assert value(scrape, "modelpress_storage_bytes", kind="models") == model["size_bytes"]
    assert value(scrape, "modelpress_storage_bytes", kind="datasets") == dataset["size_bytes"]
    assert value(scrape, "modelpress_storage_bytes", kind="artifacts") == 0


def test_http_latency_is_labelled_by_route_template(client: TestClient) -> None:
    for job_id in ("job_a", "job_b", "job_c"):
        assert client.get(f"/v1/jobs/{job_id}").status_code == 404
    scrape = samples(client.get("/metrics").text)
    routes = {dict(labels).get("route") for name, labels in scrape if "http_request" in name}
    assert "/v1/jobs/{job_id}" in routes
    assert not any(route and "job_a" in route for route in routes), routes
    counted = value(
        scrape,
        "modelpress_http_request_duration_seconds_count",
        method="GET",
        route="/v1/jobs/{job_id}",
        status_class="4xx",
    )
    assert counted is not None and counted >= 3


def test_pages_outside_the_api_schema_get_their_route_template(tmp_path: Path) -> None:
    # Pages served beside the API (not in its OpenAPI document, in nested routers) and a
    # mounted folder of static files.
    from fastapi import APIRouter, FastAPI
    from starlette.staticfiles import StaticFiles

    from api.request_context import UNMATCHED, RequestContext, route_templates

    pages, jobs = APIRouter(prefix="/pages"), APIRouter()

    @jobs.get("/{job_id}", include_in_schema=False)
    def job_page(job_id: str) -> None: ...

    pages.include_router(jobs, prefix="/jobs")
    app = FastAPI()
    app.include_router(pages)
    app.mount("/static", StaticFiles(directory=tmp_path), name="static")

    layer = RequestContext(app, templates=route_templates(app))
    assert layer._route("/pages/jobs/job_1") == "/pages/jobs/{job_id}"
    assert layer._route("/static/app.css") == "/static/{path:path}"
    assert layer._route("/nowhere/job_1") == UNMATCHED


def test_every_answer_carries_the_request_id(client: TestClient) -> None:
    ok = client.get("/healthz", headers={"X-Request-ID": "lb-7f3a.42"})
    assert ok.headers["x-request-id"] == "lb-7f3a.42"

    generated = client.get("/healthz").headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    assert client.get("/healthz").headers["x-request-id"] != generated

    # Refused by the key check before any route runs: header and problem body both.
    unauthorized = _as(client, None).get("/v1/jobs", headers={"X-Request-ID": "trace-401"})
    assert unauthorized.status_code == 401
    assert unauthorized.headers["x-request-id"] == "trace-401"
    assert unauthorized.json()["request_id"] == "trace-401"

    invalid = client.post("/v1/jobs", json={"model_id": ""}, headers={"X-Request-ID": "trace-422"})
    assert invalid.status_code == 422
    assert invalid.headers["x-request-id"] == "trace-422"
    assert invalid.json()["request_id"] == "trace-422"

    # An id that does not look like one is replaced, never echoed into headers and logs.
    for hostile in ("two words", "x" * 200, "id;drop", "ünï"):
        answer = client.get("/healthz", headers={"X-Request-ID": hostile.encode("utf-8")})
        assert re.fullmatch(r"[0-9a-f]{32}", answer.headers["x-request-id"]), hostile


def test_an_unexpected_error_carries_the_request_id(service_env: dict[str, str]) -> None:
    from api.main import create_app

    app = create_app()

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("a bug")

    with TestClient(app, raise_server_exceptions=False) as client:
        answer = client.get("/boom", headers={"X-Request-ID": "trace-500"})
    assert answer.status_code == 500
    assert answer.headers["x-request-id"] == "trace-500"
    assert answer.json()["request_id"] == "trace-500"
    assert answer.json()["type"].endswith("/internal_error")


def _readyz(client: TestClient) -> tuple[int, dict[str, Any]]:
    get_settings.cache_clear()
    get_celery.cache_clear()
    reset_engines()
    answer = client.get("/readyz")
    return answer.status_code, answer.json()


def test_readyz_names_a_broker_that_stopped(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    port = free_port()
    redis = start_redis(tmp_path, port)
    try:
        monkeypatch.setenv("MODELPRESS_BROKER_URL", f"redis://127.0.0.1:{port}/0")
        status, body = _readyz(client)
        assert (status, body["failing"]) == (200, []), body
        assert body["checks"]["broker"] == "ok"
    finally:
        redis.stop()
    status, body = _readyz(client)
    assert status == 503
    assert body["status"] == "not ready"
    assert body["failing"] == ["broker"]
    assert body["checks"]["broker"].startswith("error")
    assert body["checks"]["database"] == "ok"


@pytest.fixture
def stopped_s3(
    monkeypatch: pytest.MonkeyPatch, s3_credentials: None
) -> Iterator[ThreadedMotoServer]:
    """Storage in a real S3 API of its own, which the test can stop."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="ready")
    monkeypatch.setenv("MODELPRESS_STORAGE_URL", "s3://ready/objects")
    monkeypatch.setenv("MODELPRESS_S3_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("MODELPRESS_S3_REGION", "us-east-1")
    try:
        yield server
    finally:
        server.stop()


def test_readyz_names_a_storage_that_stopped(
    client: TestClient, stopped_s3: ThreadedMotoServer
) -> None:
    status, body = _readyz(client)
    assert (status, body["failing"]) == (200, []), body
    stopped_s3.stop()
    status, body = _readyz(client)
    assert status == 503
    assert body["failing"] == ["storage"]
    assert body["checks"]["storage"].startswith("error")


def test_readyz_answers_while_the_storage_hangs(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, s3_credentials: None
) -> None:
    # An endpoint that accepts connections and never answers (a host dropping replies): the
    # S3 client alone would wait minutes, retrying.
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(listener.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    monkeypatch.setenv("MODELPRESS_STORAGE_URL", "s3://ready/objects")
    monkeypatch.setenv(
        "MODELPRESS_S3_ENDPOINT_URL", f"http://127.0.0.1:{listener.getsockname()[1]}"
    )
    try:
        status, body = _readyz(client)
    finally:
        listener.close()
        for connection in held:
            connection.close()
    assert status == 503
    assert body["failing"] == ["storage"]
    assert "no answer within" in body["checks"]["storage"]
    assert body["checks"]["database"] == "ok"


def test_readyz_names_an_unreachable_database(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "MODELPRESS_DATABASE_URL", f"postgresql+psycopg://modelpress@127.0.0.1:{free_port()}/x"
    )
    status, body = _readyz(client)
    assert status == 503
    assert body["failing"] == ["database"]
    assert body["checks"]["database"].startswith("error")
    assert body["checks"]["storage"] == "ok"
