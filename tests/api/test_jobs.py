"""Submitting, validating, listing and canceling jobs over HTTP (no worker running)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.api.helpers import upload_dataset, upload_model
from tests.models.onnx_basic import make_cnn, make_dataset, make_mlp


@pytest.fixture
def mlp(client: TestClient, tmp_path: Path) -> dict[str, Any]:
    return upload_model(client, make_mlp(tmp_path / "mlp.onnx"))


# Validation answers the same on any database; what stores, filters, pages, cancels or
# refers to rows runs on PostgreSQL too.
both_databases = pytest.mark.parametrize(
    "db_backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)


def _spec(model_id: str, **extra: Any) -> dict[str, Any]:
    return {"model_id": model_id, "passes": [{"kind": "quantize", "method": "dynamic"}], **extra}


@both_databases
def test_create_job_returns_202_and_location(client: TestClient, mlp: dict[str, Any]) -> None:
    response = client.post("/v1/jobs", json=_spec(mlp["id"]))
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued"
    assert job["queue"] == "cpu"
    assert job["attempts"] == 0
    assert job["progress"]["fraction"] == 0.0
    assert job["spec"]["benchmark"]["batch_sizes"] == [1, 8]
    fetched = client.get(response.headers["location"]).json()
    assert fetched["id"] == job["id"] and fetched["queued_at"] is not None


def test_cuda_benchmark_goes_to_the_gpu_queue(client: TestClient, mlp: dict[str, Any]) -> None:
    job = client.post("/v1/jobs", json=_spec(mlp["id"], benchmark={"device": "cuda"})).json()
    assert job["queue"] == "gpu"


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"passes": [{"kind": "quantize", "method": "int3"}]}, "method"),
        ({"passes": [{"kind": "quantize", "method": "static"}]}, "passes"),
        ({"passes": []}, "passes"),
        ({"passes": [{"kind": "shrink"}]}, "passes"),
        ({"benchmark": {"iterations": 0}}, "iterations"),
        ({"benchmark": {"batch_sizes": [0]}}, "batch_sizes"),
        ({"evaluate": {"dataset_id": "dst_x", "max_drop": 7}}, "max_drop"),
        ({"passes": [{"kind": "quantize", "method": "dynamic", "per_chanel": True}]}, "per_chanel"),
    ],
)
def test_invalid_spec_is_422_naming_the_field(
    client: TestClient, mlp: dict[str, Any], patch: dict[str, Any], field: str
) -> None:
    response = client.post("/v1/jobs", json={**_spec(mlp["id"]), **patch})
    assert response.status_code == 422, response.text
    problem = response.json()
    assert response.headers["content-type"] == "application/problem+json"
    assert field in problem["detail"]
    assert any(field in [str(p) for p in e["loc"]] or field in e["msg"] for e in problem["errors"])
    assert client.get("/v1/jobs").json()["items"] == []


def test_unknown_model_is_rejected(client: TestClient) -> None:
    response = client.post("/v1/jobs", json=_spec("mdl_nope"))
    assert response.status_code == 422
    assert "model_id" in response.json()["detail"]


def test_dataset_that_does_not_fit_the_model_is_rejected_before_queueing(
    client: TestClient, mlp: dict[str, Any], tmp_path: Path
) -> None:
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, x=np.zeros((8, 5), np.float32))  # the model wants 16 features
    dataset = upload_dataset(client, wrong)
    spec = _spec(
        mlp["id"],
        passes=[
            {"kind": "quantize", "method": "static", "calibration": {"dataset_id": dataset["id"]}}
        ],
    )
    response = client.post("/v1/jobs", json=spec)
    assert response.status_code == 422
    assert "x" in response.json()["detail"]
    assert client.get("/v1/jobs").json()["items"] == []

    renamed = tmp_path / "renamed.npz"
    np.savez(renamed, features=np.zeros((8, 16), np.float32))
    other = upload_dataset(client, renamed)
    spec["evaluate"] = {"dataset_id": other["id"]}
    spec["passes"][0]["calibration"]["dataset_id"] = other["id"]
    response = client.post("/v1/jobs", json=spec)
    assert response.status_code == 422
    assert "'x'" in response.json()["detail"]


def test_accuracy_metric_needs_labels(
    client: TestClient, mlp: dict[str, Any], tmp_path: Path
) -> None:
    unlabeled = upload_dataset(
        client, make_dataset(tmp_path / "d.npz", tmp_path / "mlp.onnx", labels=False)
    )
    spec = _spec(mlp["id"], evaluate={"dataset_id": unlabeled["id"], "metric": "accuracy"})
    response = client.post("/v1/jobs", json=spec)
    assert response.status_code == 422
    assert "labels" in response.json()["detail"]
    spec["evaluate"]["metric"] = "fidelity"
    assert client.post("/v1/jobs", json=spec).status_code == 202


@both_databases
def test_list_filters_and_pages(client: TestClient, mlp: dict[str, Any]) -> None:
    ids = [client.post("/v1/jobs", json=_spec(mlp["id"])).json()["id"] for _ in range(3)]
    client.post(f"/v1/jobs/{ids[0]}/cancel")

    assert [j["id"] for j in client.get("/v1/jobs").json()["items"]] == ids[::-1]
    queued = client.get("/v1/jobs", params={"status": "queued"}).json()["items"]
    assert {j["id"] for j in queued} == set(ids[1:])
    canceled = client.get("/v1/jobs", params={"status": ["canceled", "failed"]}).json()["items"]
    assert [j["id"] for j in canceled] == [ids[0]]

    seen: list[str] = []
    token = None
    while True:
        params: dict[str, Any] = {"page_size": 2}
        if token:
            params["page_token"] = token
        page = client.get("/v1/jobs", params=params).json()
        seen += [j["id"] for j in page["items"]]
        token = page["next_page_token"]
        if token is None:
            break
    assert seen == ids[::-1]
    assert client.get("/v1/jobs", params={"page_token": "garbage"}).status_code == 422
    assert client.get("/v1/jobs", params={"status": "sleeping"}).status_code == 422


@both_databases
def test_cancel_a_queued_job(client: TestClient, mlp: dict[str, Any]) -> None:
    job = client.post("/v1/jobs", json=_spec(mlp["id"])).json()
    response = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert response.status_code == 202
    assert response.json()["status"] == "canceled"
    assert response.json()["finished_at"] is not None
    again = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert again.status_code == 409


@both_databases
def test_idempotency_key(client: TestClient, mlp: dict[str, Any]) -> None:
    headers = {"Idempotency-Key": "sweep-42"}
    first = client.post("/v1/jobs", json=_spec(mlp["id"]), headers=headers)
    second = client.post("/v1/jobs", json=_spec(mlp["id"]), headers=headers)
    assert first.status_code == second.status_code == 202
    assert first.json()["id"] == second.json()["id"]
    assert len(client.get("/v1/jobs").json()["items"]) == 1

    different = _spec(mlp["id"], benchmark={"batch_sizes": [4]})
    conflict = client.post("/v1/jobs", json=different, headers=headers)
    assert conflict.status_code == 422
    assert "Idempotency-Key" in conflict.json()["detail"]


@both_databases
def test_model_in_use_cannot_be_deleted(client: TestClient, mlp: dict[str, Any]) -> None:
    job = client.post("/v1/jobs", json=_spec(mlp["id"])).json()
    assert client.delete(f"/v1/models/{mlp['id']}").status_code == 409
    client.post(f"/v1/jobs/{job['id']}/cancel")
    assert client.delete(f"/v1/models/{mlp['id']}").status_code == 204
    assert client.get(f"/v1/jobs/{job['id']}").json()["model_id"] is None


def _other_project_client(client: TestClient) -> TestClient:
    project = client.post("/v1/projects", json={"name": "team-b"}).json()
    created = client.post(
        "/v1/keys", json={"project_id": project["id"], "name": "ci", "scopes": ["read", "write"]}
    ).json()
    other = TestClient(client.app)
    other.headers["Authorization"] = f"Bearer {created['key']}"
    return other


def _distill_spec(model_id: str, dataset_id: str, student: dict[str, Any]) -> dict[str, Any]:
    return {
        "model_id": model_id,
        "passes": [{"kind": "distill", "student": student, "dataset_id": dataset_id}],
    }


def test_distillation_student_must_be_a_model_of_this_project(
    client: TestClient, mlp: dict[str, Any], tmp_path: Path
) -> None:
    dataset = upload_dataset(client, make_dataset(tmp_path / "d.npz", tmp_path / "mlp.onnx"))
    other = _other_project_client(client)
    foreign = upload_model(other, make_mlp(tmp_path / "student.onnx", hidden=16))

    for student_id in (foreign["id"], "mdl_nope"):
        spec = _distill_spec(mlp["id"], dataset["id"], {"model_id": student_id})
        response = client.post("/v1/jobs", json=spec)
        assert response.status_code == 422, response.text
        problem = response.json()
        assert problem["detail"] == (
            f"body.passes.0.student.model_id: no model '{student_id}' in this project"
        )
        assert problem["errors"][0]["loc"] == ["body", "passes", 0, "student", "model_id"]
    assert client.get("/v1/jobs").json()["items"] == []

    own = upload_model(client, make_mlp(tmp_path / "small.onnx", hidden=16))
    spec = _distill_spec(mlp["id"], dataset["id"], {"model_id": own["id"]})
    response = client.post("/v1/jobs", json=spec)
    assert response.status_code == 202, response.text
    assert response.json()["spec"]["passes"][0]["student"]["model_id"] == own["id"]
    # The unfinished job reads the student: deleting it would fail the job later.
    assert client.delete(f"/v1/models/{own['id']}").status_code == 409
    client.post(f"/v1/jobs/{response.json()['id']}/cancel")
    assert client.delete(f"/v1/models/{own['id']}").status_code == 204

    # A derived student needs no upload.
    derived = _distill_spec(mlp["id"], dataset["id"], {"derive": "width", "ratio": 0.25})
    assert client.post("/v1/jobs", json=derived).status_code == 202


def test_distillation_student_must_take_the_teachers_inputs(
    client: TestClient, mlp: dict[str, Any], tmp_path: Path
) -> None:
    dataset = upload_dataset(client, make_dataset(tmp_path / "d.npz", tmp_path / "mlp.onnx"))
    cnn = upload_model(client, make_cnn(tmp_path / "cnn.onnx"))
    response = client.post(
        "/v1/jobs", json=_distill_spec(mlp["id"], dataset["id"], {"model_id": cnn["id"]})
    )
    assert response.status_code == 422, response.text
    assert "student's inputs are ['image']" in response.json()["detail"]
    assert "['x']" in response.json()["detail"]

    # The same input name with another size is refused as well, before anything runs.
    narrow = upload_model(client, make_mlp(tmp_path / "narrow.onnx", in_features=7))
    response = client.post(
        "/v1/jobs", json=_distill_spec(mlp["id"], dataset["id"], {"model_id": narrow["id"]})
    )
    assert response.status_code == 422, response.text
    assert "may differ in the batch axis only" in response.json()["detail"]


def test_prune_finetune_data_must_fit_the_model(
    client: TestClient, mlp: dict[str, Any], tmp_path: Path
) -> None:
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, x=np.zeros((8, 5), np.float32), labels=np.zeros(8, np.int64))
    dataset = upload_dataset(client, wrong)
    spec = _spec(
        mlp["id"],
        passes=[
            {
                "kind": "prune",
                "method": "structured",
                "finetune": {"dataset_id": dataset["id"], "epochs": 1},
            }
        ],
    )
    response = client.post("/v1/jobs", json=spec)
    assert response.status_code == 422, response.text
    assert response.json()["detail"].startswith("prune fine-tuning dataset array 'x'")


def test_two_four_sparsity_needs_a_cuda_benchmark(client: TestClient, mlp: dict[str, Any]) -> None:
    spec = _spec(mlp["id"], passes=[{"kind": "prune", "method": "2:4"}])
    response = client.post("/v1/jobs", json=spec)
    assert response.status_code == 422, response.text
    problem = response.json()
    assert "2:4 sparsity" in problem["detail"] and "benchmark.device" in problem["detail"]
    assert client.get("/v1/jobs").json()["items"] == []

    spec["benchmark"] = {"device": "cuda"}
    response = client.post("/v1/jobs", json=spec)
    assert response.status_code == 202, response.text
    assert response.json()["queue"] == "gpu"


def test_the_stored_spec_validates_again_in_the_worker(
    client: TestClient, mlp: dict[str, Any], tmp_path: Path
) -> None:
    from core.db import session_scope
    from core.jobspec import JobSpec
    from core.tables import Job

    dataset = upload_dataset(client, make_dataset(tmp_path / "d.npz", tmp_path / "mlp.onnx"))
    spec = _spec(
        mlp["id"],
        passes=[
            {"kind": "prune", "method": "structured", "ratio": 0.3},
            {"kind": "distill", "student": {"model_id": mlp["id"]}, "dataset_id": dataset["id"]},
        ],
    )
    job = client.post("/v1/jobs", json=spec).json()
    # Shown with its defaults filled in ...
    assert job["spec"]["passes"][0]["importance"] == "l2"
    assert job["spec"]["passes"][1]["epochs"] == 5
    # ... and stored so that the worker's validation accepts it (a structured prune must not
    # carry magnitude's `sparsity`, an uploaded student no derived `ratio`).
    with session_scope() as session:
        row = session.get(Job, job["id"])
        assert row is not None
        assert JobSpec.model_validate(row.spec).model_dump(mode="json") == job["spec"]
        assert row.extra_model_ids == [mlp["id"]]


def test_a_job_names_the_worker_that_runs_it(client: TestClient, mlp: dict[str, Any]) -> None:
    from core import jobstate
    from core.db import session_scope

    job = client.post("/v1/jobs", json=_spec(mlp["id"])).json()
    assert job["worker"] is None
    with session_scope() as session:
        assert jobstate.claim(session, job["id"], "gpu-host-3:4242") == 1
    running = client.get(f"/v1/jobs/{job['id']}").json()
    assert running["status"] == "running"
    # Which of several worker machines a job is on: what an operator asks first.
    assert running["worker"] == "gpu-host-3:4242"
    listed = client.get("/v1/jobs").json()["items"]
    assert [item["worker"] for item in listed] == ["gpu-host-3:4242"]
