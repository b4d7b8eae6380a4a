"""int4_weight_only: MatMul weights as 4-bit blocks (MatMulNBits)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from optimizers.registry import run_pass
from optimizers.results import PassContext
from tests.models.onnx_basic import make_cnn, make_mlp
from tests.optimizers.helpers import cosine, quantize_config


def _outputs(model: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"x": x})[0])


@pytest.mark.parametrize("symmetric", [True, False])
def test_int4_blocks_shrink_matmuls(tmp_path: Path, symmetric: bool) -> None:
    # K = 64 and 128: multiples of the block size.
    model = make_mlp(tmp_path / "m.onnx", in_features=64, hidden=128, classes=32)
    config = quantize_config(method="int4_weight_only", block_size=32, symmetric=symmetric)
    result = run_pass(model, config, PassContext(workdir=tmp_path / "w", datasets={}))

    assert result.details["matmul_nbits_nodes"] == 3
    assert result.model_path.stat().st_size < model.stat().st_size / 4
    ops = [node.op_type for node in onnx.load(str(result.model_path)).graph.node]
    assert "MatMul" not in ops
    x = np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32)
    assert cosine(_outputs(model, x), _outputs(result.model_path, x)) > 0.98


def test_int4_honors_exclude(tmp_path: Path) -> None:
    model = make_mlp(tmp_path / "m.onnx", in_features=64, hidden=64, classes=32)
    config = quantize_config(
        {"method": "int4_weight_only", "scope": "partial", "exclude": {"nodes": ["fc3"]}}
    )
    result = run_pass(model, config, PassContext(workdir=tmp_path / "w", datasets={}))
    assert result.details["matmul_nbits_nodes"] == 2
    assert result.details["excluded_nodes"] == ["fc3"]
    graph = onnx.load(str(result.model_path)).graph
    assert [node.name for node in graph.node if node.op_type == "MatMul"] == ["fc3"]


def test_no_matmul_is_a_note(tmp_path: Path) -> None:
    model = make_cnn(tmp_path / "cnn.onnx")
    result = run_pass(
        model, quantize_config(method="int4_weight_only"), PassContext(tmp_path / "w", {})
    )
    assert result.details["matmul_nbits_nodes"] == 0
    assert any("no MatMul with constant weights" in note for note in result.notes)
