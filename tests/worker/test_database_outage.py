"""A PostgreSQL server restarted while a job runs: the pool process retries its writes
(progress, stage results, the outcome) and the job succeeds."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from core.migrate import upgrade
from core.settings import get_settings
from core.storage import get_storage
from tests.api.helpers import upload_model
from tests.models.onnx_basic import make_mlp
from tests.ports import free_port
from tests.postgres import _as_postgres, _bindir
from worker import sandbox
from worker.runner import execute_job

pytestmark = pytest.mark.timeout(900)


@dataclass
class Postgres:
    """A PostgreSQL server of this test alone, so that it can be stopped and started."""

    bindir: Path
    data: Path
    port: int
    sockets: Path

    def _ctl(self, *args: str) -> None:
        subprocess.run(
            _as_postgres([str(self.bindir / "pg_ctl"), "-D", str(self.data), *args]),
            check=True,
            capture_output=True,
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.sockets} -h 127.0.0.1 -F -c fsync=off"
        self._ctl("-o", options, "-l", str(self.data.parent / "server.log"), "-w", "start")

    def stop(self) -> None:
        self._ctl("-m", "immediate", "-w", "stop")

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"


@pytest.fixture
def postgres() -> Iterator[Postgres]:
    bindir = _bindir()
    if bindir is None:
        pytest.fail("PostgreSQL is not installed: apt-get install postgresql")
    root = Path(tempfile.mkdtemp(prefix="modelpress-pg-outage-"))
    server = Postgres(bindir=bindir, data=root / "data", port=free_port(), sockets=root / "run")
    server.sockets.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(server.sockets, "postgres")
    subprocess.run(
        _as_postgres(
            [str(bindir / "initdb"), "-D", str(server.data), "-A", "trust", "-U", "postgres"]
        ),
        check=True,
        capture_output=True,
    )
    server.start()
    try:
        yield server
    finally:
        subprocess.run(
            _as_postgres(
                [str(bindir / "pg_ctl"), "-D", str(server.data), "-m", "immediate", "stop"]
            ),
            capture_output=True,
        )
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def database_url(postgres: Postgres) -> str:
    """Replaces the shared fixture: the tests here run on the restartable server."""
    engine = create_engine(postgres.url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text("CREATE DATABASE modelpress"))
    engine.dispose()
    url = postgres.url.rsplit("/", 1)[0] + "/modelpress"
    upgrade(url)
    return url


def _restart_once_running(postgres: Postgres, url: str, job_id: str, down_s: float) -> None:
    engine = create_engine(url)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                status = conn.execute(
                    text("SELECT status FROM jobs WHERE id = :id"), {"id": job_id}
                ).scalar()
            if status == "running":
                break
            time.sleep(0.02)
    finally:
        engine.dispose()
    postgres.stop()
    time.sleep(down_s)
    postgres.start()


def test_a_database_restart_during_a_job_does_not_fail_it(
    client: TestClient, postgres: Postgres, database_url: str, tmp_path: Path
) -> None:
    model = upload_model(client, make_mlp(tmp_path / "mlp.onnx", hidden=128))
    created = client.post(
        "/v1/jobs",
        json={
            "model_id": model["id"],
            "passes": [{"kind": "quantize", "method": "dynamic"}],
            "benchmark": {"batch_sizes": [1], "warmup": 1, "iterations": 3, "threads": 1},
        },
    )
    assert created.status_code == 202, created.text
    job_id = created.json()["id"]
    settings = get_settings()
    # Started first, so that the outage falls on the job, not on the host's start-up.
    sandbox.job_host(settings).wait_ready()
    outage = threading.Thread(
        target=_restart_once_running, args=(postgres, database_url, job_id, 6.0)
    )
    outage.start()
    try:
        status = execute_job(job_id, settings=settings, storage=get_storage())
    finally:
        outage.join()
    assert status == "succeeded"
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "succeeded", job["error"]
    names = {a["name"] for a in client.get(f"/v1/jobs/{job_id}/artifacts").json()}
    assert {"optimized.onnx", "report.json", "pass1-quantize.onnx"} <= names
