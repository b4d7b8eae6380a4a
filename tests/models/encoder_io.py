"""What the tiny transformer encoders built node by node for the tests share: their input and
output, how the graph is saved, and inputs to feed them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

INPUT = "embeddings"
OUTPUT = "pooled"


def save_encoder(
    nodes: list[onnx.NodeProto],
    inits: list[onnx.TensorProto],
    path: Path,
    *,
    name: str,
    seq: int,
    d_model: int,
) -> Path:
    """embeddings [N, seq, d_model] -> pooled [N, d_model], opset 17, checked and saved."""
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["N", seq, d_model])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["N", d_model])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def encoder_inputs(path: Path, *, samples: int, seq: int, d_model: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    np.savez(path, **{INPUT: rng.standard_normal((samples, seq, d_model)).astype(np.float32)})  # type: ignore[arg-type]
    return path
