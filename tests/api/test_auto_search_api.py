"""Auto searches over HTTP without a worker: the preflight answers at submission, the trials
are jobs of their own listed under their search, and cancel and delete treat a search and
its trials as one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.api.helpers import upload_dataset, upload_model
from tests.models.onnx_basic import make_dataset, make_mlp


@pytest.fixture
def uploaded(client: TestClient, tmp_path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    model_path = make_mlp(tmp_path / "mlp.onnx")
    model = upload_model(client, model_path)
    dataset = upload_dataset(client, make_dataset(tmp_path / "data.npz", model_path))
    return model, dataset


def _auto(model_id: str, dataset_id: str, **fields: Any) -> dict[str, Any]:
    auto = {"kind": "auto", "dataset_id": dataset_id, "allow": ["quantize"], **fields}
    return {"model_id": model_id, "passes": [auto]}


def _trials(client: TestClient, search_id: str) -> list[dict[str, Any]]:
    return client.get("/v1/jobs", params={"parent_id": search_id}).json()["items"]


def test_a_search_is_planned_at_submission_and_its_trials_are_its_own_jobs(
    client: TestClient, uploaded: tuple[dict[str, Any], dict[str, Any]]
) -> None:
    model, dataset = uploaded
    response = client.post("/v1/jobs", json=_auto(model["id"], dataset["id"]))
    assert response.status_code == 202, response.text
    search = response.json()
    assert search["kind"] == "search" and search["queue"] == "cpu"
    preflight = search["result"]["auto"]["preflight"]
    assert preflight["structure"] == "mlp"
    assert "prune_structured" in preflight["skipped"]  # not in `allow`

    trials = _trials(client, search["id"])
    assert trials and all(t["status"] == "queued" for t in trials)
    assert all(t["kind"] == "trial" and t["parent_id"] == search["id"] for t in trials)
    assert all(t["spec"]["model_id"] == model["id"] for t in trials)
    keys = [t["trial"]["key"] for t in trials]
    assert len(keys) == len(set(keys)) and "graph-r1" in keys
    listed = {job["id"] for job in client.get("/v1/jobs").json()["items"]}
    assert search["id"] in listed and not listed & {t["id"] for t in trials}

    fetched = client.get(f"/v1/jobs/{search['id']}").json()
    progress = fetched["result"]["auto"]["progress"]
    assert fetched["status"] == "running"
    assert progress["queued"] == len(trials) and progress["done"] == 0

    # A trial is part of its search: it is not deleted alone.
    refused = client.delete(f"/v1/jobs/{trials[0]['id']}")
    assert refused.status_code == 409 and refused.json()["type"].endswith("job_is_trial")

    canceled = client.post(f"/v1/jobs/{search['id']}/cancel").json()
    assert canceled["status"] == "canceled"
    auto = canceled["result"]["auto"]
    assert auto["stopped"] == "canceled"
    # Nothing was measured: the answer is the original, said plainly.
    assert auto["answer"]["original"] is True and "original" in auto["answer"]["message"]
    assert {t["status"] for t in _trials(client, search["id"])} == {"canceled"}
    artifacts = client.get(f"/v1/jobs/{search['id']}/artifacts").json()
    assert [(a["kind"], a["sha256"]) for a in artifacts] == [("model", model["sha256"])]

    assert client.delete(f"/v1/jobs/{search['id']}").status_code == 204
    assert client.get(f"/v1/jobs/{trials[0]['id']}").status_code == 404


def test_the_preflight_refuses_what_cannot_be_searched(client: TestClient, tmp_path: Path) -> None:
    model_path = make_mlp(tmp_path / "mlp.onnx")
    model = upload_model(client, model_path)
    unlabeled = upload_dataset(
        client, make_dataset(tmp_path / "data.npz", model_path, labels=False)
    )
    response = client.post("/v1/jobs", json=_auto(model["id"], unlabeled["id"], metric="accuracy"))
    assert response.status_code == 422, response.text
    assert "labels" in response.json()["detail"]
    assert client.get("/v1/jobs").json()["items"] == []


def test_an_auto_pass_measures_itself(
    client: TestClient, uploaded: tuple[dict[str, Any], dict[str, Any]]
) -> None:
    model, dataset = uploaded
    spec = _auto(model["id"], dataset["id"]) | {"benchmark": {"batch_sizes": [1]}}
    response = client.post("/v1/jobs", json=spec)
    assert response.status_code == 422
    assert "measures every trial itself" in response.text
    mixed = _auto(model["id"], dataset["id"])
    mixed["passes"].append({"kind": "quantize", "method": "dynamic"})
    assert client.post("/v1/jobs", json=mixed).status_code == 422
