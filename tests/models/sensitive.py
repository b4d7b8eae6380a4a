"""Tiny models whose quantization error is concentrated in one known node, for the
sensitivity and mixed-precision tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

#: The node whose weights make int8 quantization hurt in `make_outlier_mlp`.
SENSITIVE_NODE = "fc2"


def make_outlier_mlp(
    path: Path,
    *,
    in_features: int = 16,
    hidden: int = 64,
    classes: int = 8,
    outlier: float = 10.0,
    batch: int | str = "N",
    seed: int = 0,
    external_data: bool = False,
) -> Path:
    """x -> fc1 (MatMul/Add/Relu) -> fc2 (MatMul/Add/Relu) -> fc3 (MatMul/Add) -> logits.

    fc2's weights are ordinary except one element `outlier` times larger than the rest, so a
    per-tensor int8 scale leaves the other weights only a few quantization levels. That
    element reads a hidden unit that fc1's bias keeps at zero, so the outlier changes no
    activation range: all the damage is fc2's own weight error."""
    rng = np.random.default_rng(seed)

    def weights(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) / np.sqrt(rows)).astype(np.float32)

    w1, w2, w3 = weights(in_features, hidden), weights(hidden, hidden), weights(hidden, classes)
    b1 = (rng.standard_normal(hidden) * 0.1).astype(np.float32)
    b1[0] = -50.0  # unit 0 of fc1 never fires, so fc2's outlier weight reads zeros
    w2[0, 0] = outlier
    inits = [
        numpy_helper.from_array(w1, "w1"),
        numpy_helper.from_array(b1, "b1"),
        numpy_helper.from_array(w2, "w2"),
        numpy_helper.from_array((rng.standard_normal(hidden) * 0.1).astype(np.float32), "b2"),
        numpy_helper.from_array(w3, "w3"),
        numpy_helper.from_array((rng.standard_normal(classes) * 0.1).astype(np.float32), "b3"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h1"], name="fc1"),
        helper.make_node("Add", ["h1", "b1"], ["h1b"], name="fc1_bias"),
        helper.make_node("Relu", ["h1b"], ["a1"], name="relu1"),
        helper.make_node("MatMul", ["a1", "w2"], ["h2"], name="fc2"),
        helper.make_node("Add", ["h2", "b2"], ["h2b"], name="fc2_bias"),
        helper.make_node("Relu", ["h2b"], ["a2"], name="relu2"),
        helper.make_node("MatMul", ["a2", "w3"], ["h3"], name="fc3"),
        helper.make_node("Add", ["h3", "b3"], ["logits"], name="fc3_bias"),
    ]
    graph = helper.make_graph(
        nodes,
        "outlier_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, in_features])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, classes])],
        initializer=inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="modelpress-tests"
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    if external_data:
        onnx.save(
            model,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=f"{path.stem}.data",
            size_threshold=0,
        )
    else:
        onnx.save(model, str(path))
    return path


def make_inputs(path: Path, *, samples: int = 64, in_features: int = 16, seed: int = 1) -> Path:
    """A dataset of standard normal inputs for `make_outlier_mlp`, without labels."""
    rng = np.random.default_rng(seed)
    np.savez(path, x=rng.standard_normal((samples, in_features)).astype(np.float32))
    return path
