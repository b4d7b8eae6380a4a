"""A file store that fails the service is a 503 the caller can retry, and leaves no row behind."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.conftest import ADMIN_KEY
from tests.models.onnx_basic import make_mlp


def test_an_upload_the_file_store_refuses_is_a_503_and_keeps_no_model(
    service_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    s3_endpoint: str,
    s3_credentials: None,
    tmp_path: Path,
) -> None:
    from api.main import create_app
    from core.settings import get_settings

    # A bucket that was never created: every write to it fails.
    monkeypatch.setenv("MODELPRESS_STORAGE_URL", "s3://modelpress-no-such-bucket/data")
    monkeypatch.setenv("MODELPRESS_S3_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("MODELPRESS_S3_REGION", "us-east-1")
    get_settings.cache_clear()
    with TestClient(create_app()) as client:
        client.headers["Authorization"] = f"Bearer {ADMIN_KEY}"
        model = make_mlp(tmp_path / "mlp.onnx")
        with model.open("rb") as handle:
            response = client.post("/v1/models", files={"file": ("mlp.onnx", handle)})
        assert response.status_code == 503, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["type"].endswith("/storage_unavailable")
        assert response.headers["retry-after"] == "1"
        assert client.get("/v1/models").json()["items"] == []
    get_settings.cache_clear()
