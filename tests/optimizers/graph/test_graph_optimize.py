"""The `graph_optimize` pass with real onnxruntime: the optimized model computes what the
original does, transformer fusions fuse a BERT-style graph, a graph with nothing to fuse
still passes, large-model external data survives, and the result quantizes afterwards."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from optimizers.checks import check_spec
from optimizers.config import PipelineSpec, parse_pass
from optimizers.errors import UnsupportedError
from optimizers.external_data import has_external_data, save_model
from optimizers.model_info import inspect_model
from optimizers.pipeline import run_pipeline
from optimizers.registry import run_pass
from optimizers.results import PassContext, PassResult
from tests.models.bert_encoder import INPUT, make_bert, make_inputs
from tests.models.onnx_basic import make_mlp
from tests.optimizers.helpers import cosine


@pytest.fixture(scope="module")
def bert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("bert")
    return make_bert(folder / "bert.onnx"), make_inputs(folder / "data.npz")


def _optimize(model: Path, workdir: Path, **fields: Any) -> PassResult:
    config = parse_pass({"kind": "graph_optimize", **fields})
    return run_pass(model, config, PassContext(workdir=workdir, datasets={}))


def _outputs(model: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return [np.asarray(value) for value in session.run(None, feeds)]


def _op_types(model: Path) -> Counter[str]:
    return Counter(node.op_type for node in onnx.load(str(model)).graph.node)


@pytest.mark.parametrize("level", ["basic", "extended"])
def test_optimized_model_gives_the_originals_outputs(
    tmp_path: Path, bert: tuple[Path, Path], level: str
) -> None:
    model, data = bert
    feeds = {INPUT: np.load(data)[INPUT]}
    result = _optimize(model, tmp_path, level=level)

    assert result.model_path.parent == tmp_path and result.model_path != model
    before, after = _op_types(model), _op_types(result.model_path)
    # Constant folding and redundant-node removal happened at both levels.
    assert before["Sqrt"] == 1 and before["Identity"] == 1
    assert after["Sqrt"] == 0 and after["Identity"] == 0
    assert result.details["nodes_after"] < result.details["nodes_before"]
    original, optimized = inspect_model(model), inspect_model(result.model_path)
    assert optimized.inputs == original.inputs and optimized.outputs == original.outputs
    for want, got in zip(_outputs(model, feeds), _outputs(result.model_path, feeds), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    domains = {node.domain for node in onnx.load(str(result.model_path)).graph.node}
    tied = [note for note in result.notes if "hardware" in note]
    if level == "extended":
        assert "com.microsoft" in domains  # onnxruntime's own CPU operators
        assert tied
    else:
        assert domains <= {"", "ai.onnx"} and not tied


def test_transformer_fusions_fuse_a_bert_style_encoder(
    tmp_path: Path, bert: tuple[Path, Path]
) -> None:
    model, data = bert
    feeds = {INPUT: np.load(data)[INPUT]}
    result = _optimize(model, tmp_path, transformer_fusions=True)

    ops = _op_types(result.model_path)
    assert ops["Attention"] == 2 and ops["SkipLayerNormalization"] == 4
    assert ops["Softmax"] == 0 and ops["LayerNormalization"] == 0 and ops["Erf"] == 0
    assert ops["BiasGelu"] + ops["Gelu"] + ops["FastGelu"] == 2
    fusions = result.details["fusions"]
    assert fusions["Attention"] == 2 and fusions["SkipLayerNormalization"] == 4
    assert any("fused" in note and "2 Attention" in note for note in result.notes)
    # The intermediate models (folded, fused) are gone: only the result stays.
    assert [path.name for path in tmp_path.iterdir()] == [result.model_path.name]
    (want,) = _outputs(model, feeds)
    (got,) = _outputs(result.model_path, feeds)
    assert got.shape == want.shape
    assert cosine(want, got) >= 0.9999


def test_a_graph_with_nothing_to_fuse_is_optimized_with_a_note(tmp_path: Path) -> None:
    model = make_mlp(tmp_path / "mlp.onnx")
    feeds = {"x": np.random.default_rng(0).standard_normal((4, 16)).astype(np.float32)}
    result = _optimize(model, tmp_path / "out", transformer_fusions=True)

    assert result.details["fusions"] == {}
    assert any("found nothing to fuse" in note for note in result.notes)
    for want, got in zip(_outputs(model, feeds), _outputs(result.model_path, feeds), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fields", [{}, {"transformer_fusions": True}])
def test_a_model_with_external_data_keeps_it(
    tmp_path: Path, bert: tuple[Path, Path], fields: dict[str, Any]
) -> None:
    model, data = bert
    feeds = {INPUT: np.load(data)[INPUT]}
    external = tmp_path / "in" / "bert.onnx"
    external.parent.mkdir()
    save_model(onnx.load(str(model)), external, external_data=True)
    assert has_external_data(external)

    result = _optimize(external, tmp_path / "out", **fields)

    assert has_external_data(result.model_path)
    assert result.model_path.with_name(f"{result.model_path.name}.data").is_file()
    (want,) = _outputs(model, feeds)
    (got,) = _outputs(result.model_path, feeds)
    assert cosine(want, got) >= 0.9999


@pytest.mark.parametrize(
    ("quantize", "noted"),
    [
        ({"method": "dynamic", "per_channel": True}, False),
        # Static int8 has no form of the fused attention: it goes dynamic, and its Q/K/V
        # projection weights are int8 too instead of staying float.
        (
            {
                "method": "static",
                "preset": "transformer",
                "calibration": {"dataset_id": "data", "samples": 16},
            },
            True,
        ),
    ],
    ids=["dynamic", "static-transformer"],
)
def test_fused_model_quantizes_in_a_pipeline(
    tmp_path: Path, bert: tuple[Path, Path], quantize: dict[str, Any], noted: bool
) -> None:
    model, data = bert
    spec = PipelineSpec.model_validate(
        {
            "passes": [
                {"kind": "graph_optimize", "transformer_fusions": True},
                {"kind": "quantize", **quantize},
            ],
            "evaluate": {"dataset_id": "data", "metric": "fidelity", "max_drop": 0.01},
            "benchmark": {"batch_sizes": [4], "warmup": 1, "iterations": 5},
        }
    )
    result = run_pipeline(model_path=model, spec=spec, datasets={"data": data}, workdir=tmp_path)

    graph_pass, quantize_pass = result.passes
    assert graph_pass["kind"] == "graph_optimize"
    assert graph_pass["details"]["fusions"]["Attention"] == 2
    assert quantize_pass["details"]["quantized_nodes"] > 0
    # The fused attention became onnxruntime's integer attention.
    ops = _op_types(result.model_path)
    assert ops["QAttention"] == 2 and ops["Attention"] == 0
    assert ops["MatMulInteger"] + ops["DequantizeLinear"] > 0
    says = [note for note in quantize_pass["notes"] if "fused Attention" in note]
    assert bool(says) is noted
    first, second = result.stages
    assert first["kind"] == "graph_optimize" and first["fidelity"]["cosine_mean"] >= 0.9999
    assert first["speedup_p50"]["4"] > 0 and second["fidelity"]["cosine_mean"] >= 0.999
    comparison = result.metrics["comparison"]
    assert comparison["within_tolerance"] is True and comparison["size_ratio"] < 0.6


def _check(model: Path, passes: list[dict[str, Any]]) -> None:
    spec = PipelineSpec.model_validate({"passes": passes})
    check_spec(inspect_model(model), spec, {})


@pytest.mark.parametrize(
    ("graph", "later", "says"),
    [
        ({"level": "extended"}, {"kind": "quantize", "method": "dynamic"}, "level 'basic'"),
        (
            {"level": "extended", "transformer_fusions": True},
            {"kind": "quantize", "method": "static", "calibration": {"dataset_id": "d"}},
            "level 'basic'",
        ),
        ({"transformer_fusions": True}, {"kind": "prune", "method": "magnitude"}, "after prune"),
    ],
)
def test_passes_that_cannot_read_the_optimized_graph_are_refused_up_front(
    tmp_path: Path, graph: dict[str, Any], later: dict[str, Any], says: str
) -> None:
    model = make_mlp(tmp_path / "mlp.onnx")
    with pytest.raises(UnsupportedError, match=says):
        _check(model, [{"kind": "graph_optimize", **graph}, later])


def test_passes_that_read_the_optimized_graph_are_accepted(tmp_path: Path) -> None:
    model = make_mlp(tmp_path / "mlp.onnx")
    fused = {"kind": "graph_optimize", "transformer_fusions": True}
    _check(model, [fused, {"kind": "quantize", "method": "dynamic"}])
    _check(model, [{"kind": "quantize", "method": "dynamic"}, {**fused, "level": "extended"}])
    _check(model, [{"kind": "prune", "method": "magnitude"}, fused])
    _check(model, [{"kind": "graph_optimize"}, {"kind": "prune", "method": "magnitude"}])


def test_static_pass_keeps_a_fused_attention_float_when_per_node_says_so(
    tmp_path: Path, bert: tuple[Path, Path]
) -> None:
    model, data = bert
    fused = _optimize(model, tmp_path / "fused", transformer_fusions=True).model_path
    config = parse_pass(
        {
            "kind": "quantize",
            "method": "static",
            "calibration": {"dataset_id": "data", "samples": 16},
            "per_node": {"Attention_0": "float"},
        }
    )
    result = run_pass(fused, config, PassContext(workdir=tmp_path / "q", datasets={"data": data}))

    ops = _op_types(result.model_path)
    assert ops["Attention"] == 1 and ops["QAttention"] == 1
    assert result.details["per_node"] == {"int8_dynamic": ["Attention_1"], "float": ["Attention_0"]}
