"""fp16: float16 weights and compute, float32 inputs and outputs, overflow refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from optimizers.errors import QuantizationError
from optimizers.model_info import inspect_model
from optimizers.registry import run_pass
from optimizers.results import PassContext
from tests.models.onnx_zoo import make_large_constant_model, make_overflowing_mlp
from tests.optimizers.helpers import cosine, quantize_config


def _outputs(model: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, feeds)[0])


def test_fp16_halves_the_model_and_keeps_float32_io(
    tmp_path: Path, mlp: Path, mlp_data: Path
) -> None:
    ctx = PassContext(workdir=tmp_path, datasets={"d": mlp_data})
    result = run_pass(mlp, quantize_config(method="fp16"), ctx)

    assert result.model_path.stat().st_size < mlp.stat().st_size * 0.6
    session = ort.InferenceSession(str(result.model_path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(float)"
    assert session.get_outputs()[0].type == "tensor(float)"
    feeds = {"x": np.load(mlp_data)["x"][:16]}
    assert cosine(_outputs(mlp, feeds), _outputs(result.model_path, feeds)) > 0.999
    assert result.details["check"]["inputs"] == "dataset 'd'"
    assert result.details["check"]["max_abs_diff"] < 0.05
    assert result.details["fp32_nodes"] == []
    # The pipeline describes every pass's output, which runs the ONNX checker on it: the
    # casts the converter adds must come before the nodes that read them.
    assert inspect_model(result.model_path).inputs[0].dtype == "float32"


def test_fp16_overflow_is_an_error_naming_output_and_nodes(tmp_path: Path) -> None:
    model = make_overflowing_mlp(tmp_path / "big.onnx")
    with pytest.raises(QuantizationError, match=r"fp16 overflow: tensor 'h' \(and 1 more") as exc:
        run_pass(model, quantize_config(method="fp16"), PassContext(tmp_path / "w", {}))
    assert "['big', 'relu', 'shrink']" in exc.value.message
    assert "exclude.nodes" in exc.value.message

    # Doing what the message says gives a working model.
    config = quantize_config(
        {"method": "fp16", "scope": "partial", "exclude": {"nodes": ["big", "relu", "shrink"]}}
    )
    result = run_pass(model, config, PassContext(tmp_path / "w2", {}))
    feeds = {"x": np.random.default_rng(3).standard_normal((8, 16)).astype(np.float32)}
    assert cosine(_outputs(model, feeds), _outputs(result.model_path, feeds)) > 0.999
    assert result.details["excluded_nodes"] == ["big", "relu", "shrink"]


def test_nodes_reading_constants_beyond_fp16_stay_float32(tmp_path: Path) -> None:
    model = make_large_constant_model(tmp_path / "div.onnx")
    result = run_pass(model, quantize_config(method="fp16"), PassContext(tmp_path / "w", {}))

    assert result.details["large_constant_nodes"] == ["div"]
    assert "div" in result.details["fp32_nodes"]
    feeds = {"x": np.random.default_rng(4).standard_normal((8, 16)).astype(np.float32)}
    assert cosine(_outputs(model, feeds), _outputs(result.model_path, feeds)) > 0.999
