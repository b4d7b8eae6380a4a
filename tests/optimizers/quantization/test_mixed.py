from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from optimizers.measure.runtime import create_session
from optimizers.registry import run_pass as quantize
from optimizers.results import PassContext, PassResult
from tests.models.sensitive import SENSITIVE_NODE, make_inputs, make_outlier_mlp
from tests.optimizers.helpers import quantize_config

#: Full int8 quantization of the outlier model loses about 0.009 (1 - cosine); keeping its
#: outlier layer float brings that to about 0.002.
STRICT = 0.004


@pytest.fixture(scope="module")
def outlier(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("mixed")
    return make_outlier_mlp(folder / "outlier.onnx"), make_inputs(folder / "outlier.npz")


def _mixed(tmp_path: Path, outlier: tuple[Path, Path], **mixed: object) -> PassResult:
    model, data = outlier
    config = quantize_config(
        {
            "method": "static",
            "scope": "mixed",
            "calibration": {"dataset_id": "data", "samples": 32},
            "mixed": mixed,
        }
    )
    events: list[tuple[str, float, str]] = []
    ctx = PassContext(
        workdir=tmp_path,
        datasets={"data": data},
        progress=lambda *event: events.append(event),
        progress_span=(0.1, 0.4),
    )
    result = quantize(model, config, ctx)  # scope "mixed": per-node precision
    create_session(result.model_path, provider="CPUExecutionProvider", threads=1)
    fractions = [fraction for _, fraction, _ in events]
    assert fractions == sorted(fractions) and fractions[0] >= 0.1 and fractions[-1] <= 0.4
    return result


def test_strict_tolerance_is_met_by_keeping_the_outlier_layer_float(
    tmp_path: Path, outlier: tuple[Path, Path]
) -> None:
    result = _mixed(tmp_path, outlier, max_drop=STRICT)
    details = result.details
    assert details["met_max_drop"] is True
    assert details["metric"] == "fidelity" and details["max_drop"] == STRICT
    assert details["drop"] <= STRICT
    assert [kept["node"] for kept in details["kept_float"]] == [SENSITIVE_NODE]
    assert details["kept_float"][0]["op_type"] == "MatMul"
    assert "rank 1" in details["kept_float"][0]["reason"]
    rounds = details["rounds"]
    assert rounds[0]["excluded"] == [] and rounds[0]["drop"] > STRICT and not rounds[0]["met"]
    assert rounds[-1]["excluded"] == [SENSITIVE_NODE] and rounds[-1]["met"]
    # fc2 keeps its float32 weights; fc1 and fc3 read theirs through DequantizeLinear.
    graph = onnx.load(str(result.model_path)).graph
    floats = {i.name for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    weights = {node.name: node.input[1] for node in graph.node if node.op_type == "MatMul"}
    assert weights[SENSITIVE_NODE] == "w2" and "w2" in floats
    assert weights["fc1"] != "w1" and weights["fc3"] != "w3"
    assert not any("could NOT" in note for note in result.notes)


def test_unreachable_tolerance_returns_the_best_model_and_says_so(
    tmp_path: Path, outlier: tuple[Path, Path]
) -> None:
    result = _mixed(tmp_path, outlier, max_drop=0.0, max_rounds=1, metric="fidelity")
    details = result.details
    assert details["met_max_drop"] is False
    assert [r["excluded"] for r in details["rounds"]] == [[], [SENSITIVE_NODE]]
    first, second = (r["drop"] for r in details["rounds"])
    assert 0.0 < second < first
    assert details["drop"] == second and details["best_round"] == 1
    assert result.model_path.parent.name == "round1"
    note = next(note for note in result.notes if "could NOT" in note)
    assert "fidelity drop within 0" in note


def test_fp16_fallback_runs_the_kept_node_in_float16(
    tmp_path: Path, outlier: tuple[Path, Path]
) -> None:
    result = _mixed(tmp_path, outlier, max_drop=STRICT, fallback="fp16")
    details = result.details
    assert details["met_max_drop"] is True and details["fallback"] == "fp16"
    assert [kept["node"] for kept in details["kept_float"]] == [SENSITIVE_NODE]
    model = onnx.load(str(result.model_path))
    half = {i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT16}
    fc2 = next(node for node in model.graph.node if node.name == SENSITIVE_NODE)
    assert fc2.input[1] in half  # fc2's weights are stored as float16
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
