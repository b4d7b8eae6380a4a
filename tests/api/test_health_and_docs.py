"""Liveness, readiness and the OpenAPI document."""

from __future__ import annotations

import subprocess
import sys

import pytest
from fastapi.testclient import TestClient

from core.queue import get_celery
from core.settings import get_settings


def test_healthz_and_readyz(client: TestClient) -> None:
    assert client.get("/healthz", headers={"Authorization": ""}).json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {
        "database": "ok",
        "broker": "ok",
        "storage": "ok",
        "sandbox": "ok",
    }


def test_readyz_reports_a_machine_that_cannot_confine_jobs(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELPRESS_BWRAP_PATH", "/nonexistent/bwrap")
    get_settings.cache_clear()
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert "bubblewrap" in ready.json()["checks"]["sandbox"]

    monkeypatch.setenv("MODELPRESS_UNSAFE_UNCONFINED_JOBS", "true")
    get_settings.cache_clear()
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert "unconfined" in ready.json()["checks"]["sandbox"]


def test_readyz_of_an_api_host_that_runs_no_jobs_leaves_the_sandbox_out(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An API container without bubblewrap, its workers elsewhere (docker-compose.yml).
    monkeypatch.setenv("MODELPRESS_BWRAP_PATH", "/nonexistent/bwrap")
    monkeypatch.setenv("MODELPRESS_READYZ_SANDBOX", "false")
    get_settings.cache_clear()
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"]["sandbox"].startswith("not checked")
    assert ready.json()["checks"]["database"] == "ok"


def test_readyz_reports_an_unreachable_broker(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELPRESS_BROKER_URL", "redis://127.0.0.1:1/0")
    get_settings.cache_clear()
    get_celery.cache_clear()
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["status"] == "not ready"
    assert ready.json()["checks"]["broker"].startswith("error")
    assert ready.json()["checks"]["database"] == "ok"


def test_openapi_documents_the_api(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    for path in (
        "/v1/models",
        "/v1/datasets",
        "/v1/jobs",
        "/v1/jobs/{job_id}/cancel",
        "/v1/artifacts/{artifact_id}/content",
        "/healthz",
        "/readyz",
    ):
        assert path in schema["paths"], path
    upload = schema["paths"]["/v1/models"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in upload
    assert client.get("/docs").status_code == 200


def test_the_api_never_imports_torch_or_onnxruntime() -> None:
    code = (
        "import sys; import api.main; "
        "from fastapi.testclient import TestClient; "
        "loaded = [m for m in ('torch', 'onnxruntime') if m in sys.modules]; "
        "print(','.join(loaded))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
