"""Fixtures that run the real processes: redis-server, the API server, a Celery worker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import make_bucket
from tests.integration.processes import Service, run_redis, run_service


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    yield from run_redis(tmp_path)


@pytest.fixture
def redis_service(tmp_path: Path, redis_url: str, s3_endpoint: str) -> Iterator[Service]:
    """The production shape: Redis broker and S3 object storage; nothing shared on disk."""
    s3_env = {
        "MODELPRESS_STORAGE_URL": f"s3://{make_bucket(s3_endpoint)}/modelpress",
        "MODELPRESS_S3_ENDPOINT_URL": s3_endpoint,
        "MODELPRESS_S3_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }
    yield from run_service(tmp_path, redis_url, s3_env)


@pytest.fixture
def embedded_service(tmp_path: Path) -> Iterator[Service]:
    yield from run_service(tmp_path, None)
