"""A fixture that runs a test once with the local store and once with a real S3 server on
loopback; import `storage_kind` into a test module to use it."""

from __future__ import annotations

import pytest

from tests.conftest import make_bucket


@pytest.fixture(params=["local", "s3"])
def storage_kind(
    request: pytest.FixtureRequest,
    service_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> str:
    """The test's storage: the data folder, or a new bucket of the S3 server."""
    if request.param == "s3":
        endpoint: str = request.getfixturevalue("s3_endpoint")
        request.getfixturevalue("s3_credentials")
        monkeypatch.setenv("MODELPRESS_STORAGE_URL", f"s3://{make_bucket(endpoint)}/data")
        monkeypatch.setenv("MODELPRESS_S3_ENDPOINT_URL", endpoint)
        monkeypatch.setenv("MODELPRESS_S3_REGION", "us-east-1")
        from core.settings import get_settings

        get_settings.cache_clear()
    return str(request.param)
