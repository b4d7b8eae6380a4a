from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from optimizers.config import QuantizeConfig
from optimizers.model_info import inspect_model
from optimizers.quantization.sensitivity import analysis_feeds, analyze
from optimizers.registry import run_pass as quantize
from optimizers.results import PassContext
from tests.models.sensitive import SENSITIVE_NODE, make_inputs, make_outlier_mlp
from tests.optimizers.helpers import quantize_config


@pytest.fixture(scope="module")
def outlier(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("outlier")
    return make_outlier_mlp(folder / "outlier.onnx"), make_inputs(folder / "outlier.npz")


def _static(samples: int = 32, **extra: object) -> QuantizeConfig:
    return quantize_config(
        {"method": "static", "calibration": {"dataset_id": "data", "samples": samples}, **extra}
    )


def _report(model: Path, quantized: Path, data: Path | None, config: QuantizeConfig) -> dict:
    report = analyze(
        model,
        quantized,
        analysis_feeds(inspect_model(model), dataset=data, samples=32),
        pass_config=config.as_submitted(),
    )
    json.dumps(report, allow_nan=False)
    return report


def test_static_ranks_the_outlier_layer_first_and_the_suggestion_helps(
    tmp_path: Path, outlier: tuple[Path, Path]
) -> None:
    model, data = outlier
    config = _static()
    full = quantize(model, config, PassContext(workdir=tmp_path / "full", datasets={"data": data}))
    report = _report(model, full.model_path, data, config)

    assert report["status"] == "ok" and report["error"] is None
    assert report["samples"] == 32
    ranked = [node for node in report["nodes"] if node["quantized"]]
    # fc2's own weight error, not the cumulative error of the last layer, ranks first.
    assert ranked[0]["exclude"] == [SENSITIVE_NODE]
    assert ranked[0]["local_sqnr_db"] < ranked[1]["local_sqnr_db"] - 10
    last = next(node for node in ranked if "logits" in node["outputs"])
    assert last["sqnr_db"] < ranked[1]["sqnr_db"]  # cumulative error is worst at the end...
    assert last["rank"] > 1  # ...yet the last layer is not blamed for it
    assert report["suggested_exclude"] == {"nodes": [SENSITIVE_NODE]}
    # Pre-processing fused MatMul+Add, so some float tensors have no counterpart: counted.
    assert report["tensors"]["unmatched"] > 0
    assert report["tensors"]["compared"] + report["tensors"]["unmatched"] == 8
    assert [output["name"] for output in report["outputs"]] == ["logits"]

    suggested = quantize_config(report["suggested_pass"])
    assert suggested.scope == "partial" and suggested.exclude is not None
    assert suggested.exclude.nodes == [SENSITIVE_NODE]
    assert suggested.calibration == config.calibration
    again = quantize(
        model, suggested, PassContext(workdir=tmp_path / "partial", datasets={"data": data})
    )
    better = _report(model, again.model_path, data, suggested)
    assert better["outputs"][0]["sqnr_db"] > report["outputs"][0]["sqnr_db"] + 6
    assert better["outputs"][0]["cosine"] > report["outputs"][0]["cosine"]


def test_dynamic_quantization_graph_is_analysed(tmp_path: Path, outlier: tuple[Path, Path]) -> None:
    model, _ = outlier
    config = quantize_config(method="dynamic")
    result = quantize(model, config, PassContext(workdir=tmp_path, datasets={}))
    assert any(n.op_type == "MatMulInteger" for n in onnx.load(str(result.model_path)).graph.node)
    report = _report(model, result.model_path, None, config)  # seeded random inputs
    assert report["status"] == "ok"
    assert report["nodes"][0]["exclude"] == [SENSITIVE_NODE] and report["nodes"][0]["quantized"]
    assert report["suggested_exclude"]["nodes"] == [SENSITIVE_NODE]
    assert report["suggested_pass"] == {
        "kind": "quantize",
        "method": "dynamic",
        "scope": "partial",
        "exclude": {"nodes": [SENSITIVE_NODE]},
    }
    # Relu is computed in float by dynamic quantization: it is not listed as quantized.
    relus = [node for node in report["nodes"] if node["op_type"] == "Relu"]
    assert relus and not any(node["quantized"] for node in relus)


def test_external_data_and_fixed_batch(tmp_path: Path) -> None:
    model = make_outlier_mlp(tmp_path / "ext.onnx", batch=4, external_data=True)
    assert (tmp_path / "ext.data").is_file()
    data = make_inputs(tmp_path / "ext.npz", samples=10)  # not a multiple of the batch of 4
    config = quantize_config(method="dynamic")
    result = quantize(model, config, PassContext(workdir=tmp_path / "q", datasets={}))
    report = _report(model, result.model_path, data, config)
    assert report["status"] == "ok", report["error"]
    assert report["samples"] == 12  # three runs of the fixed batch, the last one padded
    assert report["suggested_exclude"]["nodes"] == [SENSITIVE_NODE]


def test_float16_model_has_nothing_to_exclude(tmp_path: Path, outlier: tuple[Path, Path]) -> None:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model, data = outlier
    half = tmp_path / "half.onnx"
    onnx.save(convert_float_to_float16(onnx.load(str(model)), keep_io_types=True), str(half))
    report = _report(model, half, data, quantize_config(method="fp16"))
    assert report["status"] == "ok"
    assert report["tensors"]["unmatched"] == 0
    assert all(node["quantized"] for node in report["nodes"])
    assert all(node["sqnr_db"] > 40 for node in report["nodes"])
    assert report["suggested_exclude"] == {"nodes": []} and report["suggested_pass"] is None


def test_a_model_that_cannot_be_analysed_gives_a_report_not_an_error(
    tmp_path: Path, outlier: tuple[Path, Path]
) -> None:
    model, data = outlier
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    report = analyze(model, broken, analysis_feeds(inspect_model(model), dataset=data))
    assert report["status"] == "failed" and report["error"]
    assert report["nodes"] == [] and report["suggested_exclude"] == {"nodes": []}
    json.dumps(report, allow_nan=False)

    wrong_feeds = [{"y": np.zeros((2, 16), np.float32)}]
    report = analyze(model, model, wrong_feeds)
    assert report["status"] == "failed" and "x" in report["error"]
