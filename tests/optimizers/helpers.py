"""Small helpers shared by the optimizers tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper


def make_sequence_model(path: Path, *, features: int = 8, reduce: bool = True) -> Path:
    """x[N, "seq", features] -> ReduceMean over seq -> y[N, features]: a symbolic non-batch
    dim. With reduce=False: Relu, y[N, "seq", features], an output that is no classifier."""
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    node = (
        helper.make_node("ReduceMean", ["x", "axes"], ["y"], keepdims=0)
        if reduce
        else helper.make_node("Relu", ["x"], ["y"])
    )
    out_shape: list[str | int] = ["N", features] if reduce else ["N", "seq", features]
    graph = helper.make_graph(
        [node],
        "seq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "seq", features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        initializer=[axes] if reduce else [],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def save_npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def weight_is_float(model_path: Path, node_name: str) -> bool:
    """Whether node `node_name` still exists and reads a float32 initializer as its weight
    (input 1): the node was left unquantized."""
    model = onnx.load(str(model_path))
    floats = {init.name for init in model.graph.initializer if init.data_type == TensorProto.FLOAT}
    return any(
        node.name == node_name and len(node.input) > 1 and node.input[1] in floats
        for node in model.graph.node
    )


def partial_quantize(*nodes: str) -> dict[str, Any]:
    """A dynamic quantize pass limited to `nodes`; an unknown node name fails the pass."""
    return {
        "kind": "quantize",
        "method": "dynamic",
        "scope": "partial",
        "include": {"nodes": list(nodes)},
    }
