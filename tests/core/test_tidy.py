"""Retention and the sweeper, in the local store and in S3, with the real database: expired
artifacts of old finished jobs go (the job stays and says so); orphan objects and scratch
folders go; an upload in progress, a live job's folder, and an object whose row exists stay."""

from __future__ import annotations

import os
import subprocess
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete, select, update

from core.__main__ import main as core_main
from core.db import session_factory, utcnow
from core.maintenance import run_maintenance
from core.settings import Settings, get_settings
from core.storage import LocalStorage, Storage, get_storage
from core.storage_keys import calibration_prefix
from core.sweeper import sweep
from core.tables import Artifact, Job, JobStatus, StoredModel
from tests.api.helpers import store_report, upload_model
from tests.models.onnx_basic import make_mlp
from tests.storage_kinds import storage_kind

__all__ = ["storage_kind"]  # a fixture of this module

HOURS_LATER = timedelta(hours=2)

both_databases = pytest.mark.parametrize(
    "db_backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)


@pytest.fixture
def api(storage_kind: str, client: TestClient) -> TestClient:
    return client


@pytest.fixture
def mlp(api: TestClient, tmp_path: Path) -> dict[str, Any]:
    return upload_model(api, make_mlp(tmp_path / "mlp.onnx"))


def _stored(prefix: str = "") -> list[str]:
    return sorted(o.key for o in get_storage().list_objects(prefix))


def _put(key: str, folder: Path, content: bytes = b"bytes") -> None:
    source = folder / f"put-{time.monotonic_ns()}"
    source.write_bytes(content)
    get_storage().put_file(key, source)


def _finished_job(api: TestClient, model_id: str, folder: Path, *, days_ago: float) -> str:
    spec = {"model_id": model_id, "passes": [{"kind": "quantize", "method": "dynamic"}]}
    job_id = str(api.post("/v1/jobs", json=spec).json()["id"])
    assert api.post(f"/v1/jobs/{job_id}/cancel").json()["status"] == "canceled"
    store_report(_project(job_id), job_id, b'{"metrics": {}}', folder)
    with session_factory()() as session:
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(finished_at=utcnow() - timedelta(days=days_ago))
        )
        session.commit()
    return job_id


def _project(job_id: str) -> str:
    with session_factory()() as session:
        return str(session.scalar(select(Job.project_id).where(Job.id == job_id)))


def _settings(**values: Any) -> Settings:
    return get_settings().model_copy(update=values)


# --- retention ---------------------------------------------------------------------------------


@both_databases
def test_retention_expires_only_old_finished_jobs_artifacts(
    api: TestClient, mlp: dict[str, Any], tmp_path: Path
) -> None:
    old = _finished_job(api, mlp["id"], tmp_path, days_ago=10)
    recent = _finished_job(api, mlp["id"], tmp_path, days_ago=2)
    spec = {"model_id": mlp["id"], "passes": [{"kind": "quantize", "method": "dynamic"}]}
    unfinished = api.post("/v1/jobs", json=spec).json()["id"]
    project = _project(old)
    # An unfinished job queued long ago, with a checkpoint stored by an earlier attempt.
    _put(f"{project}/jobs/{unfinished}/checkpoints/prune.pt", tmp_path)
    with session_factory()() as session:
        session.execute(
            update(Job).where(Job.id == unfinished).values(created_at=utcnow() - timedelta(days=30))
        )
        session.commit()
    before = _stored()

    # Off by default: nothing is removed.
    off = run_maintenance(settings=get_settings(), storage=get_storage())
    assert off.expired == [] and _stored() == before

    report = run_maintenance(settings=_settings(retention_days=7), storage=get_storage())
    assert [(job.job_id, job.artifacts) for job in report.expired] == [(old, 1)]
    assert _stored(f"{project}/jobs/{old}") == []
    assert _stored() == sorted(set(before) - {f"{project}/jobs/{old}/report.json"})

    page = api.get(f"/v1/jobs/{old}").json()
    assert page["status"] == "canceled" and page["artifacts_expired_at"] is not None
    assert api.get(f"/v1/jobs/{old}/artifacts").json() == []
    report_answer = api.get(f"/v1/jobs/{old}/report")
    assert report_answer.status_code == 410
    assert report_answer.json()["type"].endswith("/artifacts_expired")
    assert "retention" in report_answer.json()["detail"]
    provenance_answer = api.get(f"/v1/jobs/{old}/provenance")
    assert provenance_answer.status_code == 410
    assert provenance_answer.json()["type"].endswith("/artifacts_expired")

    assert api.get(f"/v1/jobs/{recent}").json()["artifacts_expired_at"] is None
    assert len(api.get(f"/v1/jobs/{recent}/artifacts").json()) == 1
    assert api.get(f"/v1/jobs/{recent}/report").status_code == 200
    assert api.get(f"/v1/models/{mlp['id']}/content").status_code == 200

    # A second pass finds nothing more to do.
    again = run_maintenance(settings=_settings(retention_days=7), storage=get_storage())
    assert again.expired == [] and again.swept.objects == []


# --- the sweeper -------------------------------------------------------------------------------


@both_databases
def test_the_sweeper_removes_orphans_and_keeps_what_rows_point_to(
    api: TestClient, mlp: dict[str, Any], tmp_path: Path
) -> None:
    kept_job = _finished_job(api, mlp["id"], tmp_path, days_ago=1)
    expired_job = _finished_job(api, mlp["id"], tmp_path, days_ago=1)
    project = _project(kept_job)
    orphans = [
        f"{project}/models/mdl_deleted/model.onnx",
        f"{project}/datasets/dst_deleted/data.npz",
        f"{project}/jobs/job_deleted/attempt-1/optimized.onnx",
        f"{project}/jobs/job_deleted/checkpoints/prune.pt",
        # A model id of this project stored under another project's folder.
        f"prj_other/models/{mlp['id']}/model.onnx",
    ]
    for key in orphans:
        _put(key, tmp_path)
    # A crash after retention's commit left this job's objects behind.
    with session_factory()() as session:
        session.execute(
            update(Job).where(Job.id == expired_job).values(artifacts_expired_at=utcnow())
        )
        session.execute(delete(Artifact).where(Artifact.job_id == expired_job))
        session.commit()
    orphans.append(f"{project}/jobs/{expired_job}/report.json")
    _put("not-modelpress/notes.txt", tmp_path)
    before = _stored()
    storage = get_storage()

    young = sweep(storage=storage, settings=get_settings())
    assert young.objects == [] and _stored() == before  # nothing is older than the grace

    report = sweep(storage=storage, settings=get_settings(), now=utcnow() + HOURS_LATER)
    assert report.objects == sorted(orphans)
    assert _stored() == sorted(set(before) - set(orphans))
    assert api.get(f"/v1/models/{mlp['id']}/content").status_code == 200
    assert api.get(f"/v1/jobs/{kept_job}/report").status_code == 200
    assert "not-modelpress/notes.txt" in _stored()
    if isinstance(storage, LocalStorage):  # the emptied folders go along
        assert not (storage.root / project / "models" / "mdl_deleted").exists()


def test_kept_calibrations_live_as_long_as_their_model(
    api: TestClient, mlp: dict[str, Any], tmp_path: Path
) -> None:
    with session_factory()() as session:
        project = str(session.scalar(select(StoredModel.project_id)))
    kept = f"{calibration_prefix(project, mlp['id'], 'a' * 64)}/{'b' * 64}.json"
    _put(kept, tmp_path, b"{}")
    storage = get_storage()

    report = sweep(storage=storage, settings=get_settings(), now=utcnow() + HOURS_LATER)
    assert kept not in report.objects and kept in _stored()

    assert api.delete(f"/v1/models/{mlp['id']}").status_code == 204
    assert _stored(f"{project}/models/{mlp['id']}") == []


def test_the_sweeper_never_removes_an_upload_in_progress(
    api: TestClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An upload stores its object before its row commits; a sweep runs in between, and the
    upload's file was written long before it was stored (a slow check of a large model)."""
    storage_class = type(get_storage())
    original = storage_class.put_file
    swept: list[list[str]] = []

    def put_then_sweep(self: Storage, key: str, source: Path) -> None:
        long_ago = time.time() - 2 * 86400
        os.utime(source, (long_ago, long_ago))
        original(self, key, source)
        swept.append(sweep(storage=self, settings=get_settings()).objects)

    monkeypatch.setattr(storage_class, "put_file", put_then_sweep)
    model = upload_model(api, make_mlp(tmp_path / "mlp.onnx"))
    monkeypatch.undo()

    assert swept == [[]]
    download = api.get(f"/v1/models/{model['id']}/content")
    assert download.status_code == 200 and len(download.content) == model["size_bytes"]


def test_the_sweeper_removes_scratch_folders_of_jobs_that_are_not_running(
    api: TestClient, mlp: dict[str, Any], tmp_path: Path
) -> None:
    settings = get_settings()
    finished = _finished_job(api, mlp["id"], tmp_path, days_ago=0)
    spec = {"model_id": mlp["id"], "passes": [{"kind": "quantize", "method": "dynamic"}]}
    running = api.post("/v1/jobs", json=spec).json()["id"]
    with session_factory()() as session:
        session.execute(update(Job).where(Job.id == running).values(status=JobStatus.running))
        session.commit()
    gone = subprocess.Popen(["true"])
    gone.wait()
    staging = {
        name: settings.job_staging_dir / name
        for name in (f"{running}-a1b2", f"{finished}-c3d4", "job_deleted-e5f6")
    }
    sandbox = {
        name: settings.sandbox_dir / name
        for name in (f"{os.getpid()}-0a0b0c0d", f"{gone.pid}-1a1b1c1d")
    }
    for folder in [*staging.values(), *sandbox.values()]:
        (folder / "work").mkdir(parents=True)
        (folder / "work" / "model.onnx").write_bytes(b"partial")

    assert sweep(storage=get_storage(), settings=settings).folders == []

    report = sweep(storage=get_storage(), settings=settings, now=utcnow() + HOURS_LATER)
    removed = {
        staging[f"{finished}-c3d4"],
        staging["job_deleted-e5f6"],
        sandbox[f"{gone.pid}-1a1b1c1d"],
    }
    assert set(report.folders) == removed
    assert all(not folder.exists() for folder in removed)
    assert staging[f"{running}-a1b2"].is_dir()
    assert sandbox[f"{os.getpid()}-0a0b0c0d"].is_dir()


# --- as a command, and as the worker's periodic maintenance -----------------------------------


@pytest.mark.parametrize("storage_kind", ["local"], indirect=True)
def test_the_sweep_command_prints_what_it_removed(
    api: TestClient, mlp: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = _finished_job(api, mlp["id"], tmp_path, days_ago=1)
    key = f"{_project(job)}/models/mdl_deleted/model.onnx"
    _put(key, tmp_path)
    storage = get_storage()
    assert isinstance(storage, LocalStorage)
    long_ago = time.time() - 2 * 3600
    os.utime(storage.path(key), (long_ago, long_ago))

    assert core_main(["sweep", "--dry-run"]) == 0
    assert capsys.readouterr().out == f"would remove orphan object {key}\n"
    assert storage.exists(key)

    assert core_main(["sweep"]) == 0
    captured = capsys.readouterr()
    assert captured.out == f"removed orphan object {key}\n"
    assert "1 item(s) removed" in captured.err
    assert not storage.exists(key)
    assert storage.exists(f"{_project(job)}/jobs/{job}/report.json")


@pytest.mark.parametrize("storage_kind", ["local"], indirect=True)
def test_the_worker_runs_maintenance_periodically(
    api: TestClient, mlp: dict[str, Any], tmp_path: Path
) -> None:
    from worker.maintenance import start_maintenance

    old = _finished_job(api, mlp["id"], tmp_path, days_ago=10)
    stop = start_maintenance(_settings(retention_days=7, maintenance_interval_s=0.1))
    try:
        deadline = time.monotonic() + 20
        while api.get(f"/v1/jobs/{old}").json()["artifacts_expired_at"] is None:
            assert time.monotonic() < deadline, "maintenance did not run"
            time.sleep(0.1)
    finally:
        stop.set()
    assert _stored(f"{_project(old)}/jobs/{old}") == []
