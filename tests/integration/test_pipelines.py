"""A three-pass pipeline through the real worker: distill into a narrower student, prune it
with fine-tuning, quantize it; every stage is measured and downloadable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from tests.integration.processes import ROOT, Service
from tests.integration.test_end_to_end import upload, wait_for_job
from tests.models.onnx_basic import make_dataset, make_mlp

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]


def test_distill_prune_quantize_pipeline(redis_service: Service, tmp_path: Path) -> None:
    missing = [
        name
        for name in ("distill", "prune")
        if not (ROOT / f"optimizers/trainable/{name}.py").exists()
    ]
    if missing:
        pytest.skip(f"the {' and '.join(missing)} pass is not in this checkout yet")
    model_path = make_mlp(tmp_path / "mlp.onnx", in_features=16, hidden=64, classes=4)
    data_path = make_dataset(tmp_path / "data.npz", model_path, samples=128)
    with redis_service.client() as client:
        model = upload(client, "/v1/models", model_path)
        dataset = upload(client, "/v1/datasets", data_path)
        training = {"dataset_id": dataset["id"], "epochs": 2, "batch_size": 32}
        spec = {
            "model_id": model["id"],
            "passes": [
                {"kind": "distill", "student": {"derive": "width", "ratio": 0.5}, **training},
                {"kind": "prune", "method": "structured", "ratio": 0.5, "finetune": training},
                {"kind": "quantize", "method": "dynamic"},
            ],
            "evaluate": {"dataset_id": dataset["id"], "max_drop": 1.0},
            "benchmark": {"batch_sizes": [1, 8], "warmup": 2, "iterations": 10},
        }
        created = client.post("/v1/jobs", json=spec)
        assert created.status_code == 202, created.text
        job = wait_for_job(
            redis_service, client, created.json()["id"], {"succeeded", "failed"}, 900
        )
        assert job["status"] == "succeeded", f"{job['error']}\n{redis_service.dump_logs()}"

        stages = job["result"]["stages"]
        assert [(s["pass"], s["kind"]) for s in stages] == [
            (1, "distill"),
            (2, "prune"),
            (3, "quantize"),
        ]
        assert [s["method"] for s in stages] == [None, "structured", "dynamic"]
        original = model["parameter_count"]
        assert original > stages[0]["parameter_count"] > stages[1]["parameter_count"]
        for stage in stages:
            assert stage["size_bytes"] > 0 and stage["accuracy"] is not None
            assert set(stage["speedup_p50"]) == {"1", "8"}
            assert stage["fidelity"]["samples"] == 128
        assert stages[1]["size_bytes"] < stages[0]["size_bytes"] < model["size_bytes"]
        # (int8 does not shrink a model this tiny: scales and zero points outweigh the weights)
        assert job["result"]["metrics"]["optimized"]["size_bytes"] == stages[2]["size_bytes"]

        artifacts = {a["name"]: a for a in client.get(f"/v1/jobs/{job['id']}/artifacts").json()}
        inputs = np.load(data_path)["x"][:8]
        for stage in stages:
            artifact = artifacts[stage["artifact"]]
            assert artifact["kind"] == "stage_model"
            content = client.get(f"/v1/artifacts/{artifact['id']}/content")
            assert content.status_code == 200
            session = ort.InferenceSession(content.content, providers=["CPUExecutionProvider"])
            logits = session.run(None, {"x": inputs})[0]
            assert logits.shape == (8, 4) and np.all(np.isfinite(logits))
        assert {"model", "report", "sensitivity"} <= {a["kind"] for a in artifacts.values()}
