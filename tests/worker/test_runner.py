"""The runner in-process (no Celery): what a job stores as its passes finish, what a failed
pipeline keeps, and checkpoints that outlive an attempt."""

from __future__ import annotations

import gc
import io
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient

from core.settings import get_settings
from core.storage import LocalStorage, StorageCheckpoints, get_storage
from optimizers.results import PrefixedCheckpoints
from tests.api.helpers import upload_dataset, upload_model
from tests.models.onnx_basic import make_dataset, make_mlp
from tests.optimizers.helpers import partial_quantize
from worker.runner import execute_job

# The first job imports torch (quantization pre-processing): minutes on a busy small machine.
pytestmark = pytest.mark.timeout(900)

BENCHMARK = {"batch_sizes": [1], "warmup": 1, "iterations": 5, "threads": 1}


@pytest.fixture(autouse=True)
def _frozen_gc() -> Iterator[None]:
    # As in the worker (worker/celery_app.py): the benchmark's gc.collect() would otherwise
    # scan everything torch and the service loaded, seconds per model.
    gc.freeze()
    yield
    gc.unfreeze()


def _run(client: TestClient, spec: dict[str, Any]) -> dict[str, Any]:
    created = client.post("/v1/jobs", json=spec)
    assert created.status_code == 202, created.text
    job_id = created.json()["id"]
    execute_job(job_id, settings=get_settings(), storage=get_storage())
    job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
    return job


def _download(client: TestClient, artifact: dict[str, Any]) -> bytes:
    response = client.get(f"/v1/artifacts/{artifact['id']}/content")
    assert response.status_code == 200
    return response.content


def test_stages_are_stored_and_a_failed_pass_keeps_the_ones_before_it(
    client: TestClient, tmp_path: Path
) -> None:
    model_path = make_mlp(tmp_path / "mlp.onnx", hidden=128)
    model = upload_model(client, model_path)
    dataset = upload_dataset(client, make_dataset(tmp_path / "d.npz", model_path, samples=16))
    spec = {
        "model_id": model["id"],
        "passes": [partial_quantize("fc2"), partial_quantize("fc1")],
        "evaluate": {"dataset_id": dataset["id"], "max_drop": 0.5},
        "benchmark": BENCHMARK,
    }
    job = _run(client, spec)
    assert job["status"] == "succeeded", job["error"]
    stages = job["result"]["stages"]
    assert [(s["pass"], s["artifact"]) for s in stages] == [
        (1, "pass1-quantize.onnx"),
        (2, "pass2-quantize.onnx"),
    ]
    assert stages[1]["size_bytes"] < stages[0]["size_bytes"] < model["size_bytes"]
    artifacts = client.get(f"/v1/jobs/{job['id']}/artifacts").json()
    by_name = {a["name"]: a for a in artifacts}
    assert {(a["kind"], a["name"]) for a in artifacts} == {
        ("stage_model", "pass1-quantize.onnx"),
        ("sensitivity", "pass1-sensitivity.json"),
        ("stage_model", "pass2-quantize.onnx"),
        ("sensitivity", "pass2-sensitivity.json"),
        ("model", "optimized.onnx"),
        ("report", "report.json"),
        ("provenance", "provenance.json"),
    }
    # The last stage is the optimized model.
    assert by_name["pass2-quantize.onnx"]["sha256"] == by_name["optimized.onnx"]["sha256"]
    report = json.loads(_download(client, by_name["report.json"]))
    assert report["stages"] == stages
    stage1 = ort.InferenceSession(
        _download(client, by_name["pass1-quantize.onnx"]), providers=["CPUExecutionProvider"]
    )
    assert stage1.run(None, {"x": np.ones((2, 16), np.float32)})[0].shape == (2, 4)

    spec["passes"] = [partial_quantize("fc2"), partial_quantize("no_such_node")]
    failed = _run(client, spec)
    assert failed["status"] == "failed"
    assert failed["error"]["type"] == "quantization_failed"
    assert "no_such_node" in failed["error"]["message"]
    [stage] = failed["result"]["stages"]
    assert stage["pass"] == 1 and stage["accuracy"] is not None
    # The typed result lists every field; a failed job has values only for its stages.
    assert {key for key, value in failed["result"].items() if value is not None} == {"stages"}
    kept = client.get(f"/v1/jobs/{failed['id']}/artifacts").json()
    assert sorted((a["kind"], a["name"]) for a in kept) == [
        ("sensitivity", "pass1-sensitivity.json"),
        ("stage_model", "pass1-quantize.onnx"),
    ]
    assert _download(client, next(a for a in kept if a["kind"] == "stage_model"))


def test_a_stage_model_with_external_data_is_stored_as_a_zip(
    client: TestClient, tmp_path: Path
) -> None:
    import onnx

    source = make_mlp(tmp_path / "big.onnx", hidden=128)
    proto = onnx.load(str(source))
    package = tmp_path / "big.zip"
    external = tmp_path / "external"
    external.mkdir()
    onnx.save(
        proto,
        str(external / "model.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="model.onnx.data",
        size_threshold=0,
    )
    with zipfile.ZipFile(package, "w") as archive:
        for path in external.iterdir():
            archive.write(path, arcname=path.name)
    model = upload_model(client, package)
    job = _run(
        client,
        {"model_id": model["id"], "passes": [partial_quantize("fc2")], "benchmark": BENCHMARK},
    )
    assert job["status"] == "succeeded", job["error"]
    [stage] = job["result"]["stages"]
    artifacts = {a["name"]: a for a in client.get(f"/v1/jobs/{job['id']}/artifacts").json()}
    if stage["artifact"].endswith(".zip"):  # quantization kept the weights external
        archive = zipfile.ZipFile(io.BytesIO(_download(client, artifacts[stage["artifact"]])))
        assert "pass1-quantize.onnx" in archive.namelist()
        assert artifacts[stage["artifact"]]["content_type"] == "application/zip"
    else:
        assert stage["artifact"] == "pass1-quantize.onnx"
    assert stage["artifact"] in artifacts


def test_checkpoints_outlive_an_attempt_and_stay_apart_per_pass(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "storage")
    prefix = "prj_1/jobs/job_1/checkpoints"
    first = StorageCheckpoints(storage, prefix, scratch=tmp_path / "attempt1")
    state = tmp_path / "state.pt"
    state.write_bytes(b"epoch 3")
    PrefixedCheckpoints(first, "pass1-distill/").save("last.pt", state)
    assert state.read_bytes() == b"epoch 3"  # the pass keeps its own file

    # Another attempt, on another machine as far as it knows: a fresh scratch folder.
    second = StorageCheckpoints(storage, prefix, scratch=tmp_path / "attempt2")
    dest = tmp_path / "resume" / "last.pt"
    assert PrefixedCheckpoints(second, "pass1-distill/").load("last.pt", dest) == dest
    assert dest.read_bytes() == b"epoch 3"
    assert PrefixedCheckpoints(second, "pass2-prune/").load("last.pt", dest) is None
    # Rewriting the loaded file in place must not change the stored checkpoint.
    dest.write_bytes(b"scribbled")
    again = tmp_path / "again.pt"
    assert second.load("pass1-distill/last.pt", again) == again
    assert again.read_bytes() == b"epoch 3"
    state.write_bytes(b"epoch 4")
    second.save("pass1-distill/last.pt", state)
    assert second.load("pass1-distill/last.pt", again) and again.read_bytes() == b"epoch 4"
    storage.delete_prefix(prefix)
    assert second.load("pass1-distill/last.pt", again) is None
