"""Weight-only int8: weights stored as int8 + DequantizeLinear, compute stays float."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from optimizers.registry import run_pass
from optimizers.results import PassContext
from tests.models.onnx_basic import make_cnn, make_dataset
from tests.optimizers.helpers import cosine, quantize_config, weight_is_float


def _outputs(model: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, feeds)[0])


@pytest.mark.parametrize("per_channel", [False, True])
def test_weights_shrink_and_compute_stays_float(
    tmp_path: Path, mlp: Path, mlp_data: Path, per_channel: bool
) -> None:
    config = quantize_config(method="int8_weight_only", per_channel=per_channel)
    result = run_pass(mlp, config, PassContext(workdir=tmp_path, datasets={}))

    assert result.model_path.stat().st_size < mlp.stat().st_size / 3
    feeds = {"x": np.load(mlp_data)["x"][:16]}
    assert cosine(_outputs(mlp, feeds), _outputs(result.model_path, feeds)) > 0.99
    graph = onnx.load(str(result.model_path)).graph
    ops = [node.op_type for node in graph.node]
    assert ops.count("MatMul") == 3 and ops.count("DequantizeLinear") == 3
    int8 = {i.name for i in graph.initializer if i.data_type == onnx.TensorProto.INT8}
    assert {"w1_quantized", "w2_quantized", "w3_quantized"} <= int8
    assert not {"w1", "w2", "w3"} & {i.name for i in graph.initializer}
    scales = {i.name: i.dims for i in graph.initializer if i.name.endswith("_scale")}
    assert scales["w1_scale"] == ([256] if per_channel else [])
    assert result.details["quantized_weights"] == 3
    assert result.details["excluded_nodes"] == []


def test_int8_weight_only_honors_exclude_and_needs_no_data(tmp_path: Path) -> None:
    model = make_cnn(tmp_path / "cnn.onnx", width=16)
    data = make_dataset(tmp_path / "cnn.npz", model, samples=8, labels=False)
    config = quantize_config(
        {
            "method": "int8_weight_only",
            "scope": "partial",
            "per_channel": True,
            "exclude": {"nodes": ["fc"]},
        }
    )
    result = run_pass(model, config, PassContext(workdir=tmp_path / "w", datasets={}))

    assert not weight_is_float(result.model_path, "conv1")
    assert weight_is_float(result.model_path, "fc")
    assert result.details["excluded_nodes"] == ["fc"]
    assert result.details["quantized_nodes"] == 2
    feeds = {"image": np.load(data)["image"]}
    assert cosine(_outputs(model, feeds), _outputs(result.model_path, feeds)) > 0.99
