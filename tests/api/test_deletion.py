"""Deleting jobs, batches, models and datasets over HTTP: rows and stored objects go, in the
local store and in S3; what an unfinished job reads never goes; another project's ids are
404s. No worker runs: jobs finish by being canceled, and their artifacts are stored as a
worker stores them."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from core.db import session_factory
from core.storage import get_storage
from core.tables import Job, JobStatus
from tests.api.helpers import store_report, upload_dataset, upload_model
from tests.models.onnx_basic import make_dataset, make_mlp
from tests.storage_kinds import storage_kind

__all__ = ["storage_kind"]  # a fixture of this module


@pytest.fixture
def api(storage_kind: str, client: TestClient) -> TestClient:
    return client


@pytest.fixture
def mlp(api: TestClient, tmp_path: Path) -> dict[str, Any]:
    return upload_model(api, make_mlp(tmp_path / "mlp.onnx"))


def _stored(prefix: str) -> list[str]:
    return sorted(o.key for o in get_storage().list_objects(prefix))


def _spec(model_id: str, **extra: Any) -> dict[str, Any]:
    return {"model_id": model_id, "passes": [{"kind": "quantize", "method": "dynamic"}], **extra}


def _finished_job_with_report(
    api: TestClient, model_id: str, tmp_path: Path, **spec: Any
) -> dict[str, Any]:
    job = api.post("/v1/jobs", json=_spec(model_id, **spec)).json()
    assert api.post(f"/v1/jobs/{job['id']}/cancel").json()["status"] == "canceled"
    project_id = _job_project(job["id"])
    store_report(project_id, job["id"], b'{"metrics": {}}', tmp_path)
    return job


def _job_project(job_id: str) -> str:
    with session_factory()() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job.project_id


def _other_project(client: TestClient) -> TestClient:
    project = client.post("/v1/projects", json={"name": "team-b"}).json()
    created = client.post(
        "/v1/keys", json={"project_id": project["id"], "name": "ci", "scopes": ["read", "write"]}
    ).json()
    other = TestClient(client.app)
    other.headers["Authorization"] = f"Bearer {created['key']}"
    return other


def test_a_finished_job_is_deleted_with_its_artifacts(
    api: TestClient, mlp: dict[str, Any], tmp_path: Path
) -> None:
    job = _finished_job_with_report(api, mlp["id"], tmp_path)
    project_id = _job_project(job["id"])
    artifact = api.get(f"/v1/jobs/{job['id']}/artifacts").json()[0]
    prefix = f"{project_id}/jobs/{job['id']}"
    assert _stored(prefix) == [f"{prefix}/report.json"]
    kept = _finished_job_with_report(api, mlp["id"], tmp_path)
    retry = api.post(f"/v1/jobs/{job['id']}/retry").json()

    answer = api.delete(f"/v1/jobs/{job['id']}")
    assert answer.status_code == 204, answer.text
    assert api.get(f"/v1/jobs/{job['id']}").status_code == 404
    assert api.get(f"/v1/artifacts/{artifact['id']}").status_code == 404
    assert _stored(prefix) == []
    # Its retry, the other job and the model stay.
    assert api.get(f"/v1/jobs/{retry['id']}").json()["retry_of"] is None
    assert len(_stored(f"{project_id}/jobs/{kept['id']}")) == 1
    assert api.get(f"/v1/models/{mlp['id']}/content").status_code == 200
    assert api.delete(f"/v1/jobs/{job['id']}").status_code == 404


def test_an_unfinished_job_cannot_be_deleted(api: TestClient, mlp: dict[str, Any]) -> None:
    job = api.post("/v1/jobs", json=_spec(mlp["id"])).json()
    answer = api.delete(f"/v1/jobs/{job['id']}")
    assert answer.status_code == 409
    problem = answer.json()
    assert problem["type"].endswith("/job_active")
    assert "queued" in problem["detail"] and "cancel" in problem["detail"]
    with session_factory()() as session:
        session.execute(update(Job).where(Job.id == job["id"]).values(status=JobStatus.running))
        session.commit()
    assert api.delete(f"/v1/jobs/{job['id']}").json()["type"].endswith("/job_active")
    assert api.get(f"/v1/jobs/{job['id']}").json()["status"] == "running"


def test_a_model_in_use_is_refused_naming_the_jobs_then_deleted_with_its_file(
    api: TestClient, mlp: dict[str, Any], tmp_path: Path
) -> None:
    dataset = upload_dataset(api, make_dataset(tmp_path / "d.npz", tmp_path / "mlp.onnx"))
    student = upload_model(api, make_mlp(tmp_path / "student.onnx", hidden=16))
    finished = _finished_job_with_report(api, mlp["id"], tmp_path)
    distill = {
        "model_id": mlp["id"],
        "passes": [
            {"kind": "distill", "student": {"model_id": student["id"]}, "dataset_id": dataset["id"]}
        ],
    }
    running = api.post("/v1/jobs", json=distill).json()
    project_id = _job_project(running["id"])

    for route, resource_id in (
        ("models", mlp["id"]),
        ("models", student["id"]),
        ("datasets", dataset["id"]),
    ):
        answer = api.delete(f"/v1/{route}/{resource_id}")
        assert answer.status_code == 409, answer.text
        problem = answer.json()
        assert problem["type"].endswith(f"/{route[:-1]}_in_use")
        assert running["id"] in problem["detail"] and finished["id"] not in problem["detail"]
        assert len(_stored(f"{project_id}/{route}/{resource_id}")) == 1

    api.post(f"/v1/jobs/{running['id']}/cancel")
    for route, resource_id in (
        ("models", mlp["id"]),
        ("models", student["id"]),
        ("datasets", dataset["id"]),
    ):
        assert api.delete(f"/v1/{route}/{resource_id}").status_code == 204
        assert api.get(f"/v1/{route}/{resource_id}").status_code == 404
        assert _stored(f"{project_id}/{route}/{resource_id}") == []

    # The finished jobs' pages still read: the model is gone, what they ran and measured stays.
    for job_id in (finished["id"], running["id"]):
        page = api.get(f"/v1/jobs/{job_id}")
        assert page.status_code == 200, page.text
        assert page.json()["model_id"] is None and page.json()["spec"]["model_id"] == mlp["id"]
    assert api.get(f"/v1/jobs/{finished['id']}/report").status_code == 200
    retry = api.post(f"/v1/jobs/{running['id']}/retry")
    assert retry.status_code == 409 and "no model" in retry.json()["detail"]


def test_a_batch_is_deleted_with_its_jobs_once_they_all_finished(
    api: TestClient, mlp: dict[str, Any], tmp_path: Path
) -> None:
    batch = api.post("/v1/batches", json={"jobs": [_spec(mlp["id"]), _spec(mlp["id"])]}).json()
    first, second = (job["id"] for job in batch["jobs"])
    project_id = _job_project(first)
    api.post(f"/v1/jobs/{first}/cancel")
    store_report(project_id, first, b"{}", tmp_path)

    answer = api.delete(f"/v1/batches/{batch['id']}")
    assert answer.status_code == 409
    assert answer.json()["type"].endswith("/batch_active")
    assert second in answer.json()["detail"] and first not in answer.json()["detail"]
    # Nothing was deleted, not even the finished job.
    assert api.get(f"/v1/jobs/{first}").status_code == 200
    assert len(_stored(f"{project_id}/jobs/{first}")) == 1

    api.post(f"/v1/batches/{batch['id']}/cancel")
    assert api.delete(f"/v1/batches/{batch['id']}").status_code == 204
    assert api.get(f"/v1/batches/{batch['id']}").status_code == 404
    assert [api.get(f"/v1/jobs/{j}").status_code for j in (first, second)] == [404, 404]
    assert _stored(f"{project_id}/jobs/{first}") == []
    assert api.get(f"/v1/models/{mlp['id']}").status_code == 200


def test_another_projects_resources_are_404_and_stay(
    api: TestClient, mlp: dict[str, Any], tmp_path: Path
) -> None:
    dataset = upload_dataset(api, make_dataset(tmp_path / "d.npz", tmp_path / "mlp.onnx"))
    job = _finished_job_with_report(api, mlp["id"], tmp_path)
    batch = api.post("/v1/batches", json={"jobs": [_spec(mlp["id"])]}).json()
    api.post(f"/v1/batches/{batch['id']}/cancel")
    other = _other_project(api)
    for path in (
        f"/v1/jobs/{job['id']}",
        f"/v1/batches/{batch['id']}",
        f"/v1/models/{mlp['id']}",
        f"/v1/datasets/{dataset['id']}",
    ):
        answer = other.delete(path)
        assert answer.status_code == 404, answer.text
        assert answer.headers["content-type"] == "application/problem+json"
        assert api.get(path).status_code == 200
    assert len(_stored(f"{_job_project(job['id'])}/jobs/{job['id']}")) == 1


def test_a_failing_store_still_deletes_the_row_and_leaves_orphans_for_the_sweeper(
    api: TestClient, mlp: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = _finished_job_with_report(api, mlp["id"], tmp_path)
    project_id = _job_project(job["id"])
    storage = type(get_storage())

    def broken(self: object, prefix: str) -> None:
        raise OSError("storage is unreachable")

    monkeypatch.setattr(storage, "delete_prefix", broken)
    assert api.delete(f"/v1/jobs/{job['id']}").status_code == 204
    assert api.get(f"/v1/jobs/{job['id']}").status_code == 404
    monkeypatch.undo()
    assert len(_stored(f"{project_id}/jobs/{job['id']}")) == 1


# --- a deletion and a submission at the same moment ------------------------------------------

both_databases = pytest.mark.parametrize(
    "db_backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)


@pytest.fixture
def held_delete_lock(
    storage_kind: str, client: TestClient
) -> Iterator[tuple[TestClient, threading.Event]]:
    """Holds a model deletion between its row lock and its check for unfinished jobs until
    the event is set: the moment a concurrent submission would slip in."""
    from core import inuse

    release = threading.Event()
    original = inuse.active_jobs_using

    def slow(*args: Any, **kwargs: Any) -> list[str]:
        release.wait(30)
        return original(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("api.routes.models.active_jobs_using", slow)
        patch.setattr("api.routes.datasets.active_jobs_using", slow)
        yield client, release


@both_databases
@pytest.mark.parametrize("storage_kind", ["local"], indirect=True)
@pytest.mark.parametrize("input_kind", ["model", "dataset"])
def test_a_job_submitted_while_its_input_is_deleted_is_refused(
    held_delete_lock: tuple[TestClient, threading.Event], tmp_path: Path, input_kind: str
) -> None:
    api, release = held_delete_lock
    mlp = upload_model(api, make_mlp(tmp_path / "mlp.onnx"))
    dataset = upload_dataset(api, make_dataset(tmp_path / "d.npz", tmp_path / "mlp.onnx"))
    spec = _spec(mlp["id"], evaluate={"dataset_id": dataset["id"], "metric": "fidelity"})
    target = f"/v1/models/{mlp['id']}" if input_kind == "model" else f"/v1/datasets/{dataset['id']}"
    answers: dict[str, Any] = {}

    def delete() -> None:
        answers["delete"] = api.delete(target)

    def submit() -> None:
        answers["submit"] = api.post("/v1/jobs", json=spec)

    deleting = threading.Thread(target=delete)
    deleting.start()
    time.sleep(0.5)  # the deletion holds its lock and waits before its check
    submitting = threading.Thread(target=submit)
    submitting.start()
    submitting.join(1.5)
    waited = submitting.is_alive()
    release.set()
    deleting.join(30)
    submitting.join(30)
    # The submission waited for the deletion: it cannot commit a job reading a row being deleted.
    assert waited, answers["submit"].text

    assert answers["delete"].status_code == 204, answers["delete"].text
    refused = answers["submit"]
    assert refused.status_code == 422, refused.text
    assert input_kind in refused.json()["detail"]
    assert api.get("/v1/jobs").json()["items"] == []


@both_databases
@pytest.mark.parametrize("storage_kind", ["local"], indirect=True)
def test_a_deletion_after_a_submission_took_its_locks_sees_the_job(
    storage_kind: str, client: TestClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other order: the submission holds its locks; the deletion waits, then sees the job."""
    from api import submit as submit_module

    mlp = upload_model(client, make_mlp(tmp_path / "mlp.onnx"))
    dataset = upload_dataset(client, make_dataset(tmp_path / "d.npz", tmp_path / "mlp.onnx"))
    spec = _spec(mlp["id"], evaluate={"dataset_id": dataset["id"], "metric": "fidelity"})
    release = threading.Event()
    original = submit_module.confirm_inputs

    def slow_confirm(*args: Any, **kwargs: Any) -> None:
        original(*args, **kwargs)
        release.wait(30)

    monkeypatch.setattr(submit_module, "confirm_inputs", slow_confirm)
    answers: dict[str, Any] = {}
    submitting = threading.Thread(
        target=lambda: answers.update(submit=client.post("/v1/jobs", json=spec))
    )
    submitting.start()
    time.sleep(0.5)
    deleting = threading.Thread(
        target=lambda: answers.update(delete=client.delete(f"/v1/datasets/{dataset['id']}"))
    )
    deleting.start()
    deleting.join(1.5)
    waited = deleting.is_alive()
    release.set()
    submitting.join(30)
    deleting.join(30)
    assert waited, answers["delete"].text

    assert answers["submit"].status_code == 202, answers["submit"].text
    assert answers["delete"].status_code == 409, answers["delete"].text
    assert answers["submit"].json()["id"] in answers["delete"].json()["detail"]
    assert client.get(f"/v1/datasets/{dataset['id']}").status_code == 200
