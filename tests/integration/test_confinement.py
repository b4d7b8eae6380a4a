"""Confinement through the real service: an API and a Celery worker (SQLite, local storage,
the embedded broker) run hostile programs stored past the upload checks, and a worker that
cannot confine jobs refuses to start."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from core.storage import LocalStorage
from tests.integration.processes import BIN, Service, run_service, start, wait_until
from tests.integration.test_end_to_end import upload, wait_for_job
from tests.models.onnx_basic import make_mlp
from tests.worker.hostile import (
    insert_stored_model,
    save_glutton,
    save_thief,
    torchscript_info,
)
from tests.worker.test_sandbox import CANARY, _encodings

# A worker start (its job host imports torch) and conversions: minutes on a busy machine.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

FINAL = {"succeeded", "failed", "canceled"}
QUICK_BENCHMARK = {"batch_sizes": [1], "warmup": 1, "iterations": 3, "threads": 1}


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    yield from run_service(tmp_path_factory.mktemp("confinement"), None)


def _data_dir(service: Service) -> Path:
    return Path(service.env["MODELPRESS_DATA_DIR"])


def _insert_model(service: Service, path: Path, info: dict[str, Any]) -> str:
    data_dir = _data_dir(service)
    engine = create_engine(f"sqlite:///{data_dir / 'modelpress.db'}")
    storage = LocalStorage(data_dir / "storage")
    try:
        with Session(engine) as session, session.begin():
            return insert_stored_model(session, storage, path=path, info=info)
    finally:
        engine.dispose()


def _submit(client: httpx.Client, model_id: str, **extra: Any) -> str:
    created = client.post(
        "/v1/jobs",
        json={
            "model_id": model_id,
            "passes": [{"kind": "quantize", "method": "dynamic"}],
            "benchmark": QUICK_BENCHMARK,
            **extra,
        },
    )
    assert created.status_code == 202, created.text
    return str(created.json()["id"])


def test_hostile_programs_fail_confined_and_the_worker_runs_the_next_job(
    service: Service, tmp_path: Path
) -> None:
    canary = _data_dir(service) / "canary.bin"
    canary.write_bytes(CANARY)
    thief = save_thief(tmp_path / "thief.pt", canary=canary, size=len(CANARY))
    glutton = save_glutton(tmp_path / "glutton.pt", gigabytes=50)
    with service.client() as client:
        stolen = _submit(
            client, _insert_model(service, thief, torchscript_info(thief, features=len(CANARY)))
        )
        hungry = _submit(
            client,
            _insert_model(service, glutton, torchscript_info(glutton, features=8)),
            limits={"memory_limit_mb": 2000},
        )
        after = _submit(client, upload(client, "/v1/models", make_mlp(tmp_path / "m.onnx"))["id"])

        failed = wait_for_job(service, client, stolen, FINAL, 300)
        assert failed["status"] == "failed", failed
        left = [repr(failed).encode()]
        for artifact in client.get(f"/v1/jobs/{stolen}/artifacts").json():
            left.append(client.get(f"/v1/artifacts/{artifact['id']}/content").content)
        for encoding in _encodings(CANARY):
            assert all(encoding not in part for part in left)

        stopped = wait_for_job(service, client, hungry, FINAL, 300)
        assert stopped["status"] == "failed"
        assert stopped["error"]["type"] == "memory_limit", stopped["error"]
        assert "memory limit of 2000 MB" in stopped["error"]["message"]

        done = wait_for_job(service, client, after, FINAL, 300)
        assert done["status"] == "succeeded", done["error"]
    assert service.processes["worker"].popen.poll() is None, service.dump_logs()


def test_a_worker_that_cannot_confine_jobs_refuses_to_start(
    service: Service, tmp_path: Path
) -> None:
    env = {**service.env, "MODELPRESS_BWRAP_PATH": str(tmp_path / "no-bwrap")}
    worker = start(
        "worker-without-sandbox",
        [str(BIN / "celery"), "-A", "worker.celery_app", "worker", "-Q", "nowhere"],
        env,
        tmp_path,
    )
    try:
        wait_until(lambda: worker.popen.poll() is not None, 120, "the worker to refuse")
        assert worker.popen.returncode == 78
        assert "cannot confine jobs and refuses to run them" in worker.output()
        assert "bubblewrap" in worker.output()
        assert "ready." not in worker.output()
    finally:
        worker.stop()
