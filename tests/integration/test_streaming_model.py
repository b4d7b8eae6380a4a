"""A streaming model from another exporter through the real API and worker: dims written -1,
a recurrent state batched on axis 1 and a scalar sample rate given once in the dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from tests.integration.processes import Service
from tests.integration.test_end_to_end import upload, wait_for_job
from tests.models.sequences import make_streaming_model, streaming_dataset


def test_streaming_model_is_quantized_evaluated_and_benchmarked(
    embedded_service: Service, tmp_path: Path
) -> None:
    model_path = make_streaming_model(tmp_path / "vad.onnx")
    data_path = streaming_dataset(tmp_path / "vad.npz", samples=24)
    with embedded_service.client() as client:
        model = upload(client, "/v1/models", model_path)
        assert [tensor["shape"] for tensor in model["inputs"]] == [[None, 64], [2, None, 32], []]
        dataset = upload(client, "/v1/datasets", data_path)
        spec = {
            "model_id": model["id"],
            "passes": [
                {
                    "kind": "quantize",
                    "method": "static",
                    "calibration": {"dataset_id": dataset["id"], "samples": 16},
                }
            ],
            "evaluate": {"dataset_id": dataset["id"], "metric": "fidelity", "max_drop": 0.05},
            "benchmark": {"batch_sizes": [1, 4], "warmup": 1, "iterations": 5, "threads": 1},
        }
        # With every batch dim written -1, the state's batch axis cannot be told.
        refused = client.post("/v1/jobs", json=spec)
        assert refused.status_code == 422, refused.text
        assert "'state'" in refused.json()["detail"]
        assert 'inputs["state"].batch_axis' in refused.json()["detail"]

        spec["inputs"] = {"state": {"batch_axis": 1}, "sr": {"batch_axis": None}}
        created = client.post("/v1/jobs", json=spec)
        assert created.status_code == 202, created.text
        job = wait_for_job(embedded_service, client, created.json()["id"], {"succeeded", "failed"})
        assert job["status"] == "succeeded", job["error"]
        metrics = job["result"]["metrics"]
        assert metrics["fidelity"]["samples"] == 24
        assert set(metrics["comparison"]["speedup_p50"]) == {"1", "4"}
        assert metrics["benchmark"]["inputs"]["batch_axes"] == {"audio": 0, "state": 1, "sr": None}

        artifacts = client.get(f"/v1/jobs/{job['id']}/artifacts").json()
        optimized = next(artifact for artifact in artifacts if artifact["kind"] == "model")
        content = client.get(f"/v1/artifacts/{optimized['id']}/content").content
    path = tmp_path / "optimized.onnx"
    path.write_bytes(content)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    prob, state = session.run(
        None,
        {
            "audio": np.zeros((3, 64), np.float32),
            "state": np.zeros((2, 3, 32), np.float32),
            "sr": np.array(16000, np.int64),
        },
    )
    assert prob.shape == (3, 4) and state.shape == (2, 3, 32)
