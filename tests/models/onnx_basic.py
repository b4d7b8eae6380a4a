"""Tiny ONNX models and datasets built on the fly, so tests need no downloads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _weights(rng: np.random.Generator, *shape: int, scale: float = 0.5) -> np.ndarray:
    return (rng.standard_normal(shape) * scale / np.sqrt(shape[0])).astype(np.float32)


def make_mlp(
    path: Path,
    *,
    in_features: int = 16,
    hidden: int = 64,
    classes: int = 4,
    batch: int | str = "N",
    opset: int = 17,
    seed: int = 0,
) -> Path:
    """x[batch, in_features] -> MatMul/Add/Relu -> MatMul/Add -> logits[batch, classes]."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(_weights(rng, in_features, hidden), "w1"),
        numpy_helper.from_array(rng.standard_normal(hidden).astype(np.float32) * 0.1, "b1"),
        numpy_helper.from_array(_weights(rng, hidden, hidden), "w2"),
        numpy_helper.from_array(rng.standard_normal(hidden).astype(np.float32) * 0.1, "b2"),
        numpy_helper.from_array(_weights(rng, hidden, classes), "w3"),
        numpy_helper.from_array(rng.standard_normal(classes).astype(np.float32) * 0.1, "b3"),
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
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, in_features])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, classes])],
        initializer=inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="modelpress-tests"
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def make_cnn(
    path: Path,
    *,
    channels: int = 3,
    size: int = 16,
    width: int = 8,
    classes: int = 4,
    batch: int | str = "N",
    opset: int = 17,
    seed: int = 0,
) -> Path:
    """image[batch, C, H, W] -> 2x(Conv/Relu) -> GlobalAveragePool -> Flatten -> Gemm."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(_weights(rng, width, channels, 3, 3), "c1_w"),
        numpy_helper.from_array(np.zeros(width, np.float32), "c1_b"),
        numpy_helper.from_array(_weights(rng, width, width, 3, 3), "c2_w"),
        numpy_helper.from_array(np.zeros(width, np.float32), "c2_b"),
        numpy_helper.from_array(_weights(rng, classes, width), "fc_w"),
        numpy_helper.from_array(np.zeros(classes, np.float32), "fc_b"),
    ]
    nodes = [
        helper.make_node("Conv", ["image", "c1_w", "c1_b"], ["c1"], name="conv1", pads=[1] * 4),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "c2_w", "c2_b"], ["c2"], name="conv2", pads=[1] * 4),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, channels, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, classes])],
        initializer=inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="modelpress-tests"
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def make_dataset(
    path: Path,
    model_path: Path,
    *,
    samples: int = 64,
    labels: bool = True,
    seed: int = 1,
) -> Path:
    """Random inputs shaped for the model; labels are the float model's own top-1 classes,
    so the baseline's accuracy is exactly 1.0 and any drop comes from the optimization."""
    import onnxruntime as ort

    model = onnx.load(str(model_path))
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}
    for value in model.graph.input:
        dims = [d.dim_value for d in value.type.tensor_type.shape.dim[1:]]
        arrays[value.name] = rng.standard_normal((samples, *dims)).astype(np.float32)
    if labels:
        session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
        logits = session.run(None, arrays)[0]
        arrays["labels"] = np.argmax(logits, axis=1).astype(np.int64)
    np.savez(path, **arrays)
    return path
