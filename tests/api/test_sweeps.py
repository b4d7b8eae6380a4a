"""Sweeps expanded by the server, job summaries in lists, lookups by content, and what the
OpenAPI document and headers tell generated clients (no worker running; a finished job is
written the way a worker writes it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from core import jobstate
from core.db import session_factory
from core.sweeps import SweepError, expand
from core.tables import JobStatus
from tests.api.helpers import upload_model
from tests.models.onnx_basic import make_mlp


@pytest.fixture
def mlp(client: TestClient, tmp_path: Path) -> dict[str, Any]:
    return upload_model(client, make_mlp(tmp_path / "mlp.onnx"))


def _sweep(model_id: str) -> dict[str, Any]:
    return {
        "name": "dynamic sweep",
        "sweep": {
            "spec": {"model_id": model_id, "passes": [{"kind": "quantize", "method": "dynamic"}]},
            "matrix": {
                "passes.0.per_channel": [True, False],
                "benchmark.warmup": [1, 2],
                "benchmark.batch_sizes": [[1], [1, 4]],
            },
        },
    }


def test_sweep_becomes_one_labelled_job_per_combination(
    client: TestClient, mlp: dict[str, Any]
) -> None:
    response = client.post("/v1/batches", json=_sweep(mlp["id"]))
    assert response.status_code == 202, response.text
    assert response.headers["retry-after"] == "2"
    batch = response.json()
    assert batch["total"] == 8
    labels = [job["labels"] for job in batch["jobs"]]
    assert labels[0] == {
        "passes.0.per_channel": True,
        "benchmark.warmup": 1,
        "benchmark.batch_sizes": [1],
    }
    assert labels[1]["benchmark.batch_sizes"] == [1, 4]
    assert len({str(sorted(label.items())) for label in labels}) == 8
    for job in batch["jobs"]:
        quantize = job["spec"]["passes"][0]
        assert quantize["per_channel"] == job["labels"]["passes.0.per_channel"]
        assert job["spec"]["benchmark"]["batch_sizes"] == job["labels"]["benchmark.batch_sizes"]

    # A page of the batch's jobs, as a client pages through a large sweep.
    page = client.get("/v1/jobs", params={"batch_id": batch["id"], "page_size": 5}).json()
    assert len(page["items"]) == 5 and page["next_page_token"]


def test_invalid_combination_is_refused_with_index_and_field(
    client: TestClient, mlp: dict[str, Any]
) -> None:
    sweep = _sweep(mlp["id"])
    sweep["sweep"]["matrix"] = {
        "passes.0.method": ["dynamic", "int3"],
        "passes.0.per_channel": [True],
    }
    response = client.post("/v1/batches", json=sweep)
    assert response.status_code == 422, response.text
    locs = [error["loc"] for error in response.json()["errors"]]
    assert any(loc[:3] == ["body", "jobs", 1] and "passes" in loc for loc in locs), locs

    sweep["sweep"]["matrix"] = {"passes.3.method": ["dynamic"]}
    response = client.post("/v1/batches", json=sweep)
    assert response.status_code == 422
    assert "passes.3.method" in response.text

    sweep["sweep"]["matrix"] = {
        "passes.0.sparsity": [0.1] * 10,
        "passes.0.per_channel": [True] * 101,
    }
    assert client.post("/v1/batches", json=sweep).status_code == 422

    assert client.get("/v1/jobs").json()["items"] == []
    assert client.get("/v1/batches").json()["items"] == []


def test_expansion_sets_paths_and_refuses_missing_list_items() -> None:
    spec = {"passes": [{"kind": "prune"}], "labels": {"team": "a"}}
    jobs = expand(spec, {"passes.0.sparsity": [0.3, 0.5], "evaluate.max_drop": [0.01]})
    assert [job["passes"][0]["sparsity"] for job in jobs] == [0.3, 0.5]
    assert jobs[0]["evaluate"] == {"max_drop": 0.01}
    assert jobs[1]["labels"] == {"team": "a", "passes.0.sparsity": 0.5, "evaluate.max_drop": 0.01}
    assert spec == {"passes": [{"kind": "prune"}], "labels": {"team": "a"}}
    with pytest.raises(SweepError, match=r"passes\.1"):
        expand(spec, {"passes.1.sparsity": [0.3]})


COMPARISON = {
    "size_ratio": 0.27,
    "speedup_p50": {"1": 1.8},
    "speedup_interval": {"1": [1.6, 2.0]},
    "accuracy_drop": 0.0,
    "metric": "accuracy",
    "drop": 0.0,
    "max_drop": 0.01,
    "slower_than_baseline": False,
    "within_tolerance": True,
    "verdict": "3.7x smaller, 1.8x faster at batch 1, no accuracy drop",
}


def _succeed(job_id: str, result: dict[str, Any] | None = None) -> None:
    side = {
        "size_bytes": 1000,
        "latency_ms": {"1": {"p50": 1.0, "p90": 1.1, "p95": 1.2, "p99": 1.3, "mean": 1.05}},
        "throughput_per_s": {"1": 900.0},
        "peak_memory_bytes": 10,
        "accuracy": 1.0,
    }
    default = {
        "metrics": {
            "baseline": side,
            "optimized": side | {"size_bytes": 270},
            "fidelity": {"cosine_mean": 0.999, "source": "evaluate_dataset", "samples": 8},
            "comparison": COMPARISON,
        },
        "notes": [],
        "passes": [{"kind": "quantize"}],
        "stages": [{"size_ratio": 0.27}],
    }
    result = default if result is None else result
    with session_factory()() as session:
        attempt = jobstate.claim(session, job_id, "test-worker")
        assert attempt is not None
        assert jobstate.finish(session, job_id, attempt, status=JobStatus.succeeded, result=result)
        session.commit()


def test_job_lists_carry_a_summary_of_finished_jobs(
    client: TestClient, mlp: dict[str, Any]
) -> None:
    batch = client.post("/v1/batches", json=_sweep(mlp["id"])).json()
    _succeed(batch["jobs"][0]["id"])
    listed = client.get("/v1/jobs", params={"batch_id": batch["id"], "page_size": 100}).json()
    summaries = {job["id"]: job["summary"] for job in listed["items"]}
    done = summaries[batch["jobs"][0]["id"]]
    assert done["size_ratio"] == 0.27 and done["speedup_p50"] == {"1": 1.8}
    assert done["within_tolerance"] is True and done["slower_than_baseline"] is False
    assert done["verdict"].startswith("3.7x smaller")
    assert sum(summary is None for summary in summaries.values()) == 7
    again = client.get(f"/v1/batches/{batch['id']}").json()
    assert again["jobs"][0]["summary"] == done
    job = client.get(f"/v1/jobs/{batch['jobs'][0]['id']}").json()
    assert job["result"]["metrics"]["comparison"]["verdict"] == COMPARISON["verdict"]


def test_models_can_be_found_by_content(client: TestClient, mlp: dict[str, Any]) -> None:
    found = client.get("/v1/models", params={"sha256": mlp["sha256"].upper()}).json()["items"]
    assert [m["id"] for m in found] == [mlp["id"]]
    assert client.get("/v1/models", params={"sha256": "0" * 64}).json()["items"] == []
    assert client.get("/v1/models", params={"sha256": "xyz"}).status_code == 422
    assert client.get("/v1/datasets", params={"sha256": "0" * 64}).json()["items"] == []


def test_openapi_document_serves_generated_clients(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert schema["security"] == [{"bearerAuth": []}]
    assert schema["paths"]["/healthz"]["get"]["security"] == []
    operations = {
        (path, method): operation["operationId"]
        for path, item in schema["paths"].items()
        for method, operation in item.items()
    }
    assert operations[("/v1/jobs", "post")] == "create_job"
    assert operations[("/v1/batches/{batch_id}", "get")] == "get_batch"
    assert len(set(operations.values())) == len(operations)
    job = schema["components"]["schemas"]["JobOut"]["properties"]
    assert "$ref" in str(job["result"]) and "JobResult" in str(job["result"])
    assert "JobSummary" in str(job["summary"])
    assert "Comparison" in schema["components"]["schemas"]


def test_a_result_in_an_unexpected_shape_is_served_not_refused(
    client: TestClient, mlp: dict[str, Any]
) -> None:
    batch = client.post("/v1/batches", json=_sweep(mlp["id"])).json()
    odd = {"metrics": {"comparison": {"size_ratio": "small"}}, "stages": 5}
    _succeed(batch["jobs"][0]["id"], odd)
    job = client.get(f"/v1/jobs/{batch['jobs'][0]['id']}")
    assert job.status_code == 200, job.text
    assert job.json()["summary"] is None
    assert job.json()["result"]["unparsed"] == odd
    assert client.get("/v1/jobs", params={"batch_id": batch["id"]}).status_code == 200
