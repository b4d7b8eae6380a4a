"""Fixtures that run the real processes: redis-server, the API server, a Celery worker.

Starting a worker is slow (it preloads torch), so each shape of the service is started once
per session and shared by the tests.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import make_bucket
from tests.integration.processes import Service, run_redis, run_service


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server URL without a database number."""
    for url in run_redis(tmp_path_factory.mktemp("redis")):
        yield url.rsplit("/", 1)[0]


def _s3_env(endpoint: str) -> dict[str, str]:
    return {
        "MODELPRESS_STORAGE_URL": f"s3://{make_bucket(endpoint)}/modelpress",
        "MODELPRESS_S3_ENDPOINT_URL": endpoint,
        "MODELPRESS_S3_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }


@pytest.fixture(scope="session")
def redis_service(
    tmp_path_factory: pytest.TempPathFactory, redis_server: str, s3_endpoint: str
) -> Iterator[Service]:
    """The production shape: Redis broker and S3 object storage; nothing shared on disk."""
    yield from run_service(
        tmp_path_factory.mktemp("shared-service"), f"{redis_server}/0", _s3_env(s3_endpoint)
    )


@pytest.fixture(scope="session")
def embedded_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """The single-machine shape: SQLite, local storage, the embedded broker. The worker-crash
    test kills its worker and leaves a replacement running."""
    yield from run_service(tmp_path_factory.mktemp("embedded-service"), None)
