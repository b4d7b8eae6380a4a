"""Tiny ONNX models with real-world shapes (control flow, RNNs, dynamic dims, large values,
external data) for the quantization tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _save(
    path: Path,
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    initializers: list[onnx.TensorProto],
    *,
    opset: int = 17,
) -> Path:
    graph = helper.make_graph(nodes, path.stem, inputs, outputs, initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def make_overflowing_mlp(path: Path, *, features: int = 16, seed: int = 0) -> Path:
    """x[N, 16] -> MatMul 'big' (weights 3e4, all < 65504) -> Relu 'relu' -> Mul 'shrink'
    (1e-3) -> MatMul 'head' -> y[N, 4]. In float32 every value is finite; 'big' produces ~1e5,
    beyond float16's range, so a plain float16 conversion gives inf. (A Mul right after the
    MatMul would be fused into it by onnxruntime and hide the overflow.)"""
    rng = np.random.default_rng(seed)
    big = (np.sign(rng.standard_normal((features, 8))) * 30000).astype(np.float32)
    head = (rng.standard_normal((8, 4)) * 0.3).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "big_w"], ["h"], name="big"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("Mul", ["r", "scale"], ["a"], name="shrink"),
        helper.make_node("MatMul", ["a", "head_w"], ["y"], name="head"),
    ]
    inits = [
        numpy_helper.from_array(big, "big_w"),
        numpy_helper.from_array(np.array(1e-3, np.float32), "scale"),
        numpy_helper.from_array(head, "head_w"),
    ]
    return _save(
        path,
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        inits,
    )


def make_large_constant_model(path: Path, *, features: int = 16, seed: int = 0) -> Path:
    """x[N, 16] -> Div 'div' by 2e5 (a constant float16 cannot hold) -> Mul 'rescale' by
    1e4 -> MatMul 'fc' -> y[N, 4]; every activation stays within the float16 range."""
    rng = np.random.default_rng(seed)
    nodes = [
        helper.make_node("Div", ["x", "divisor"], ["d"], name="div"),
        helper.make_node("Mul", ["d", "gain"], ["g"], name="rescale"),
        helper.make_node("MatMul", ["g", "w"], ["y"], name="fc"),
    ]
    inits = [
        numpy_helper.from_array(np.array(2e5, np.float32), "divisor"),
        numpy_helper.from_array(np.array(1e4, np.float32), "gain"),
        numpy_helper.from_array(rng.standard_normal((features, 4)).astype(np.float32), "w"),
    ]
    return _save(
        path,
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        inits,
    )
