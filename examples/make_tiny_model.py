"""Writes a tiny classifier (`tiny.onnx`) and a dataset for it (`tiny.npz`, inputs named after
the model's input plus `labels`) next to this script, so a first job runs in seconds.

    .venv/bin/python examples/make_tiny_model.py

Runs where the service is installed (it needs numpy, onnx and onnxruntime, not the client)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

IN, HIDDEN, CLASSES, SAMPLES = 64, 512, 10, 256


def build_model(path: Path) -> None:
    rng = np.random.default_rng(0)
    sizes = [(IN, HIDDEN), (HIDDEN, HIDDEN), (HIDDEN, CLASSES)]
    inits, nodes, current = [], [], "x"
    for i, (rows, cols) in enumerate(sizes, start=1):
        weight = (rng.standard_normal((rows, cols)) / np.sqrt(rows)).astype(np.float32)
        inits += [
            numpy_helper.from_array(weight, f"w{i}"),
            numpy_helper.from_array(np.zeros(cols, np.float32), f"b{i}"),
        ]
        out = "logits" if i == len(sizes) else f"a{i}"
        nodes += [
            helper.make_node("MatMul", [current, f"w{i}"], [f"h{i}"], name=f"fc{i}"),
            helper.make_node("Add", [f"h{i}", f"b{i}"], [out if i == len(sizes) else f"z{i}"]),
        ]
        if i < len(sizes):
            nodes.append(helper.make_node("Relu", [f"z{i}"], [out], name=f"relu{i}"))
        current = out
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", IN])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, path)


def build_dataset(model_path: Path, path: Path) -> None:
    """Labels are the float model's own answers: the original scores 1.0, and any drop is
    what the optimization cost."""
    x = np.random.default_rng(1).standard_normal((SAMPLES, IN)).astype(np.float32)
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    labels = session.run(None, {"x": x})[0].argmax(axis=1).astype(np.int64)
    np.savez(path, x=x, labels=labels)


if __name__ == "__main__":
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent
    build_model(folder / "tiny.onnx")
    build_dataset(folder / "tiny.onnx", folder / "tiny.npz")
    print(f"wrote {folder / 'tiny.onnx'} and {folder / 'tiny.npz'}")
