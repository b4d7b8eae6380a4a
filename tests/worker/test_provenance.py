"""The provenance manifest as the pool process builds it, from what it fetched and stored."""

from __future__ import annotations

import importlib.metadata
import json

from worker.provenance import FileDigest, ProducedFile, build_manifest

SPEC = {
    "passes": [{"method": "dynamic", "kind": "quantize"}],
    "model_id": "mdl_1",
    "spec_version": 2,
    "evaluate": {"max_drop": 0.1, "dataset_id": "ds_1"},
}


def _manifest(environment: dict[str, object] | None) -> dict[str, object]:
    return build_manifest(
        job_id="job_1",
        attempt=2,
        spec=SPEC,
        model=FileDigest(sha256="a" * 64, size_bytes=10),
        model_format="onnx",
        extra_models={},
        datasets={"ds_1": FileDigest(sha256="b" * 64, size_bytes=20)},
        produced=[
            ProducedFile(
                "stage_model",
                "pass1-quantize.onnx",
                "application/octet-stream",
                "c" * 64,
                5,
                stage=1,
            ),
            ProducedFile("model", "optimized.onnx", "application/octet-stream", "c" * 64, 5),
        ],
        environment=environment,
        worker={"name": "host:1", "id": "wrk_1"},
    )


def test_the_job_reported_versions_win_and_the_installed_ones_fill_in() -> None:
    manifest = _manifest(
        {"python": "3.99.0", "versions": {"onnxruntime": "9.9.9", "modelpress": "unknown"}}
    )
    versions = manifest["versions"]
    assert isinstance(versions, dict)
    assert versions["onnxruntime"] == "9.9.9" and versions["python"] == "3.99.0"
    assert versions["numpy"] == importlib.metadata.version("numpy")
    # "unknown" from the job says less than the installed distribution.
    assert versions["modelpress"] == importlib.metadata.version("modelpress")


def test_recipe_keys_are_sorted_and_stage_outputs_name_their_pass() -> None:
    manifest = _manifest(None)
    text = json.dumps(manifest)
    assert json.dumps(manifest["recipe"]) == json.dumps(SPEC, sort_keys=True)
    assert text.index('"evaluate"') < text.index('"model_id"') < text.index('"passes"')
    artifacts = manifest["artifacts"]
    assert isinstance(artifacts, list)
    assert [a.get("pass") for a in artifacts] == [1, None]
    assert manifest["hardware"]  # without a reported environment: the pool process's platform
