"""PyTorch programs and ONNX models with external data through a real worker."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from tests.integration.processes import Service
from tests.integration.test_end_to_end import upload, wait_for_job
from tests.models.torch_programs import make_external_data_zip, save_pt2

pytestmark = pytest.mark.slow


# Exporting with torch.export and converting in the worker take minutes on a busy machine.
@pytest.mark.timeout(1200)
def test_pt2_and_onnx_zip_jobs_succeed(embedded_service: Service, tmp_path: Path) -> None:
    pt2_path = save_pt2(tmp_path / "tiny.pt2")
    zip_path = make_external_data_zip(tmp_path / "mlp.zip", tmp_path / "build")
    benchmark = {"batch_sizes": [1, 4], "warmup": 1, "iterations": 5}
    with embedded_service.client() as client:
        jobs = {}
        for kind, path in (("pt2", pt2_path), ("zip", zip_path)):
            model = upload(client, "/v1/models", path)
            spec = {
                "model_id": model["id"],
                "passes": [{"kind": "quantize", "method": "dynamic"}],
                "benchmark": benchmark,
            }
            created = client.post("/v1/jobs", json=spec)
            assert created.status_code == 202, created.text
            jobs[kind] = created.json()["id"]

        pt2_job = wait_for_job(embedded_service, client, jobs["pt2"], {"succeeded", "failed"}, 600)
        assert pt2_job["status"] == "succeeded", (
            f"{pt2_job['error']}\n{embedded_service.dump_logs()}"
        )
        source = pt2_job["result"]["source"]
        assert source["format"] == "torch_export" and source["converted"] is True
        assert source["opset"] == 18 and [t["name"] for t in source["inputs"]] == ["x"]
        assert any("baseline" in note for note in pt2_job["result"]["notes"])
        assert pt2_job["result"]["metrics"]["optimized"]["latency_ms"]["4"]["p50"] > 0

        zip_job = wait_for_job(embedded_service, client, jobs["zip"], {"succeeded", "failed"}, 600)
        assert zip_job["status"] == "succeeded", (
            f"{zip_job['error']}\n{embedded_service.dump_logs()}"
        )
        assert zip_job["result"]["source"] == {"format": "onnx_zip", "converted": False}
        artifacts = {a["kind"]: a for a in client.get(f"/v1/jobs/{zip_job['id']}/artifacts").json()}
        model_artifact = artifacts["model"]
        assert model_artifact["name"] == "optimized.zip"
        assert model_artifact["content_type"] == "application/zip"
        content = client.get(f"/v1/artifacts/{model_artifact['id']}/content").content

    out = tmp_path / "optimized"
    with zipfile.ZipFile(io.BytesIO(content)) as archive:
        names = archive.namelist()
        assert len([n for n in names if n.endswith(".onnx")]) == 1 and len(names) > 1
        archive.extractall(out)
    x = np.random.default_rng(0).standard_normal((4, 32)).astype(np.float32)
    optimized = ort.InferenceSession(
        str(out / "optimized.onnx"), providers=["CPUExecutionProvider"]
    )
    original = ort.InferenceSession(
        str(tmp_path / "build" / "mlp.onnx"), providers=["CPUExecutionProvider"]
    )
    (got,) = optimized.run(None, {"x": x})
    (want,) = original.run(None, {"x": x})
    cosine = float((got * want).sum() / (np.linalg.norm(got) * np.linalg.norm(want)))
    assert cosine > 0.99
