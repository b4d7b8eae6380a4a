"""Quantization of models as other frameworks export them: external data, symbolic dims,
control flow, recurrent state inputs, model-local functions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from optimizers.config import PipelineSpec
from optimizers.errors import QuantizationError
from optimizers.external_data import external_data_locations, model_size_bytes
from optimizers.pipeline import run_pipeline
from optimizers.registry import run_pass
from optimizers.results import PassContext, PassResult
from tests.models import onnx_zoo as zoo
from tests.models.onnx_basic import make_dataset, make_mlp
from tests.optimizers.helpers import cosine, quantize_config, save_npz

CPU = ["CPUExecutionProvider"]

#: One config per method; static calibrates on dataset "data".
METHODS: dict[str, dict[str, Any]] = {
    "dynamic": {"method": "dynamic"},
    "dynamic_per_channel": {"method": "dynamic", "per_channel": True},
    "static": {"method": "static", "calibration": {"dataset_id": "data", "samples": 16}},
    "weights_only": {"method": "int8_weight_only", "per_channel": True},
    "fp16": {"method": "fp16"},
    "int4": {"method": "int4_weight_only", "block_size": 32},
}


def _run(model: Path, config: dict[str, Any], tmp_path: Path, data: Path | None) -> PassResult:
    ctx = PassContext(workdir=tmp_path / "work", datasets={"data": data} if data else {})
    return run_pass(model, quantize_config(config), ctx)


def _outputs(model: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(str(model), providers=CPU)
    return np.asarray(session.run(None, feeds)[0])


def _similarity(original: Path, quantized: Path, feeds: dict[str, np.ndarray]) -> float:
    return cosine(_outputs(original, feeds), _outputs(quantized, feeds))


def _rows(data: Path, count: int = 16) -> dict[str, np.ndarray]:
    with np.load(data) as arrays:
        return {name: arrays[name][:count] for name in arrays.files if name != "labels"}


# External data ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def external_mlp(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("external")
    plain = make_mlp(folder / "plain.onnx", hidden=256)
    data = make_dataset(folder / "mlp.npz", plain, samples=32)
    model_dir = folder / "model"
    model_dir.mkdir()
    return zoo.save_with_external_data(plain, model_dir / "mlp.onnx"), data


@pytest.mark.parametrize("method", list(METHODS))
def test_external_data_models_keep_external_data(
    tmp_path: Path, external_mlp: tuple[Path, Path], method: str
) -> None:
    model, data = external_mlp
    result = _run(model, METHODS[method], tmp_path, data)

    output = result.model_path
    assert output.parent == tmp_path / "work"
    locations = external_data_locations(onnx.load(str(output), load_external_data=False))
    assert locations, "the output keeps no external data"
    for location in locations:
        assert not Path(location).is_absolute() and ".." not in Path(location).parts
        assert (output.parent / location).is_file()
    assert output.stat().st_size < 20_000  # the weights are in the data file
    similarity = _similarity(model, output, _rows(data))
    assert similarity > (0.999 if method == "fp16" else 0.98)


def test_external_data_model_through_the_pipeline(
    tmp_path: Path, external_mlp: tuple[Path, Path]
) -> None:
    model, data = external_mlp
    spec = PipelineSpec.model_validate(
        {
            "passes": [
                {
                    "kind": "quantize",
                    "method": "static",
                    "calibration": {"dataset_id": "data", "samples": 16},
                }
            ],
            "evaluate": {"dataset_id": "data", "samples": 16},
            "benchmark": {"batch_sizes": [1], "warmup": 1, "iterations": 3, "threads": 1},
        }
    )
    result = run_pipeline(model_path=model, spec=spec, datasets={"data": data}, workdir=tmp_path)

    assert result.metrics["baseline"]["accuracy"] == 1.0
    assert result.metrics["optimized"]["accuracy"] >= 0.8
    assert model_size_bytes(result.model_path) < model_size_bytes(model) / 2
    output = onnx.load(str(result.model_path), load_external_data=False)
    for location in external_data_locations(output):
        assert (result.model_path.parent / location).is_file()


# Symbolic dims ----------------------------------------------------------------------------


def test_static_quantization_of_a_cnn_with_symbolic_height_and_width(tmp_path: Path) -> None:
    model = zoo.make_dynamic_cnn(tmp_path / "cnn.onnx")
    rng = np.random.default_rng(0)
    data = save_npz(
        tmp_path / "images.npz", image=rng.standard_normal((16, 3, 24, 24)).astype(np.float32)
    )
    config = {"method": "static", "per_channel": True, "calibration": {"dataset_id": "data"}}
    result = _run(model, config, tmp_path, data)

    assert result.details["quantized_nodes"] > 0
    for size in (24, 32, 17):
        feeds = {"image": rng.standard_normal((3, 3, size, size)).astype(np.float32)}
        assert _similarity(model, result.model_path, feeds) > 0.98, size


@pytest.mark.parametrize("method", ["dynamic", "static"])
def test_quantization_of_a_model_with_symbolic_sequence_length(tmp_path: Path, method: str) -> None:
    model = zoo.make_sequence_encoder(tmp_path / "encoder.onnx")
    rng = np.random.default_rng(0)
    data = save_npz(tmp_path / "seq.npz", x=rng.standard_normal((24, 10, 16)).astype(np.float32))
    config = {"method": method} | (
        {"calibration": {"dataset_id": "data"}} if method == "static" else {}
    )
    result = _run(model, config, tmp_path, data)

    assert result.details["quantized_nodes"] > 0
    for seq in (10, 3, 40):
        feeds = {"x": rng.standard_normal((2, seq, 16)).astype(np.float32)}
        assert _similarity(model, result.model_path, feeds) > 0.98, seq


# Control flow and recurrent state ----------------------------------------------------------


def _dataset_for(model: Path, path: Path, *, samples: int = 32) -> Path:
    rng = np.random.default_rng(3)
    arrays: dict[str, np.ndarray] = {}
    for value in onnx.load(str(model), load_external_data=False).graph.input:
        dims = [d.dim_value or 6 for d in value.type.tensor_type.shape.dim[1:]]
        arrays[value.name] = rng.standard_normal((samples, *dims)).astype(np.float32)
    return save_npz(path, **arrays)


def _subgraph_op_types(path: Path) -> list[str]:
    model = onnx.load(str(path), load_external_data=False)
    found: list[str] = []
    for node in model.graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                found.extend(inner.op_type for inner in attribute.g.node)
    return found


CONTROL_FLOW = {
    "if": zoo.make_if_model,
    "loop": zoo.make_loop_model,
    "lstm": zoo.make_lstm_model,
}


@pytest.mark.parametrize("method", ["dynamic", "static"])
@pytest.mark.parametrize("kind", list(CONTROL_FLOW))
def test_control_flow_and_recurrent_models(tmp_path: Path, kind: str, method: str) -> None:
    model = CONTROL_FLOW[kind](tmp_path / f"{kind}.onnx")
    data = _dataset_for(model, tmp_path / f"{kind}.npz")
    config = {"method": method} | (
        {"calibration": {"dataset_id": "data", "samples": 32}} if method == "static" else {}
    )
    try:
        result = _run(model, config, tmp_path, data)
    except QuantizationError as exc:  # allowed, as long as it says what the problem is
        pytest.fail(f"{kind}/{method} failed: {exc}")

    feeds = _rows(data)
    if kind == "if":
        # Both branches: rows with a positive and with a negative sum.
        negative = {"x": -np.abs(feeds["x"])}
        assert _similarity(model, result.model_path, negative) > 0.98
        feeds = {"x": np.abs(feeds["x"])}
    assert _similarity(model, result.model_path, feeds) > 0.98
    assert result.details["quantized_nodes"] > 0
    if kind in ("if", "loop"):
        inner = _subgraph_op_types(result.model_path)
        if method == "dynamic":
            assert "MatMul" not in inner, inner  # the MatMuls inside subgraphs were quantized
        else:
            assert {"MatMul", "Gemm"} & set(inner), inner  # pre-processing may fuse to Gemm
            assert any("subgraphs stay float" in note for note in result.notes)
    else:  # nothing to say about subgraphs a model does not have
        assert not any("subgraphs" in note for note in result.notes), result.notes


# Model-local functions -------------------------------------------------------------------


def test_model_local_functions_quantize(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # onnxruntime's symbolic shape inference handles model-local functions: pre-processing
    # runs in full.
    monkeypatch.chdir(tmp_path)
    model = zoo.make_local_function_model(tmp_path / "gelu.onnx")
    data = _dataset_for(model, tmp_path / "gelu.npz")
    result = _run(model, {"method": "dynamic"}, tmp_path, data)

    assert result.details["pre_processed"] == "full"
    assert result.details["quantized_nodes"] > 0
    assert _similarity(model, result.model_path, _rows(data)) > 0.98
    assert list(tmp_path.glob("sym_shape_infer_temp*")) == []


def test_symbolic_shape_inference_failure_falls_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    model = zoo.make_contrib_inverse_model(tmp_path / "inverse.onnx")
    data = _dataset_for(model, tmp_path / "inverse.npz")
    result = _run(model, {"method": "dynamic"}, tmp_path, data)

    assert result.details["pre_processed"] == "onnx_shape_inference_only"
    assert any("symbolic shape inference failed" in note for note in result.notes)
    assert result.details["quantized_nodes"] > 0
    assert _similarity(model, result.model_path, _rows(data)) > 0.98
    assert list(tmp_path.glob("sym_shape_infer_temp*")) == []  # nothing left in the cwd
