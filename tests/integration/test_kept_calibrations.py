"""Static calibrations kept between jobs, through the real worker and sandbox: the second job
of one model, dataset and recipe reuses the first one's calibration and makes the same
model; another project's job of the very same files calibrates on its own."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.processes import Service
from tests.integration.test_end_to_end import upload, wait_for_job
from tests.models.onnx_basic import make_dataset, make_mlp

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _static_job(
    service: Service, client: httpx.Client, model_id: str, dataset_id: str
) -> dict[str, Any]:
    spec = {
        "model_id": model_id,
        "passes": [
            {
                "kind": "quantize",
                "method": "static",
                "calibration": {"dataset_id": dataset_id, "samples": 32},
            }
        ],
        "benchmark": {"batch_sizes": [1], "warmup": 1, "iterations": 5},
    }
    created = client.post("/v1/jobs", json=spec)
    assert created.status_code == 202, created.text
    job = wait_for_job(service, client, created.json()["id"], {"succeeded", "failed"}, 300)
    assert job["status"] == "succeeded", f"{job['error']}\n{service.dump_logs()}"
    return job


def _calibration(job: dict[str, Any]) -> tuple[bool, int, list[str]]:
    (quantize,) = job["result"]["passes"]
    details = quantize["details"]
    return details["calibration_reused"], details["calibrated_samples"], quantize["notes"]


def _model_sha256(client: httpx.Client, job: dict[str, Any]) -> str:
    artifacts = client.get(f"/v1/jobs/{job['id']}/artifacts").json()
    (model,) = [a for a in artifacts if a["kind"] == "model"]
    return str(model["sha256"])


def _other_project(service: Service, client: httpx.Client) -> httpx.Client:
    project = client.post("/v1/projects", json={"name": "calibration-neighbours"}).json()
    created = client.post(
        "/v1/keys", json={"project_id": project["id"], "name": "ci", "scopes": ["read", "write"]}
    )
    assert created.status_code == 201, created.text
    return httpx.Client(
        base_url=service.base_url,
        headers={"Authorization": f"Bearer {created.json()['key']}"},
        timeout=30,
    )


def test_the_second_job_reuses_the_first_ones_calibration_within_its_project_only(
    redis_service: Service, tmp_path: Path
) -> None:
    model_path = make_mlp(tmp_path / "mlp.onnx", hidden=128)
    data_path = make_dataset(tmp_path / "data.npz", model_path, samples=64)
    with redis_service.client() as client:
        model = upload(client, "/v1/models", model_path)
        dataset = upload(client, "/v1/datasets", data_path)
        first = _static_job(redis_service, client, model["id"], dataset["id"])
        second = _static_job(redis_service, client, model["id"], dataset["id"])

        reused, samples, notes = _calibration(first)
        assert (reused, samples) == (False, 32)
        assert any("the ranges are kept for later runs" in note for note in notes)
        reused, samples, notes = _calibration(second)
        assert (reused, samples) == (True, 32)
        assert any(note.startswith("calibration reused") for note in notes)
        assert _model_sha256(client, second) == _model_sha256(client, first)

        with _other_project(redis_service, client) as other:
            their_model = upload(other, "/v1/models", model_path)
            their_dataset = upload(other, "/v1/datasets", data_path)
            theirs = _static_job(redis_service, other, their_model["id"], their_dataset["id"])
            assert _calibration(theirs)[:2] == (False, 32)
            assert _model_sha256(other, theirs) == _model_sha256(client, first)
