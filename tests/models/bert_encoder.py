"""A tiny BERT-style encoder built node by node in the exact shape of an exported BERT
layer (biased Q/K/V projections, scores divided by sqrt(head size), erf GELU, residual Add
before each LayerNormalization), so that onnxruntime's transformer optimizer recognizes its
attention, GELU and skip-connection normalizations; and an MLP with nothing of the sort."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from tests.models.encoder_io import INPUT, OUTPUT, encoder_inputs, save_encoder


def make_bert(
    path: Path,
    *,
    layers: int = 2,
    d_model: int = 32,
    heads: int = 4,
    seq: int = 8,
    seed: int = 0,
) -> Path:
    """embeddings [N, seq, d_model] -> `layers` post-norm BERT layers -> mean over tokens."""
    rng = np.random.default_rng(seed)
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    head_dim = d_model // heads

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(op: str, inputs: list[str], name: str, **attrs: Any) -> str:
        nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def linear(x: str, name: str, rows: int, cols: int) -> str:
        w = (rng.standard_normal((rows, cols)) / np.sqrt(rows)).astype(np.float32)
        b = (rng.standard_normal(cols) * 0.02).astype(np.float32)
        product = node("MatMul", [x, const(f"{name}.weight", w)], name)
        return node("Add", [const(f"{name}.bias", b), product], f"{name}_bias")

    def norm(x: str, name: str) -> str:
        gamma = (1.0 + 0.1 * rng.standard_normal(d_model)).astype(np.float32)
        beta = (0.05 * rng.standard_normal(d_model)).astype(np.float32)
        return node(
            "LayerNormalization",
            [x, const(f"{name}.gamma", gamma), const(f"{name}.beta", beta)],
            name,
            axis=-1,
            epsilon=1e-12,
        )

    def gelu(x: str, name: str) -> str:
        scaled = node(
            "Div", [x, const(f"{name}.sqrt2", np.array(np.sqrt(2.0), np.float32))], f"{name}_div"
        )
        erf = node("Erf", [scaled], f"{name}_erf")
        shifted = node("Add", [erf, const(f"{name}.one", np.array(1.0, np.float32))], f"{name}_add")
        product = node("Mul", [x, shifted], f"{name}_mul")
        return node("Mul", [product, const(f"{name}.half", np.array(0.5, np.float32))], name)

    heads_shape = const("heads_shape", np.array([0, 0, heads, head_dim], dtype=np.int64))
    model_shape = const("model_shape", np.array([0, 0, d_model], dtype=np.int64))
    # As exporters write it: a constant subgraph that basic optimization folds.
    scale = node("Sqrt", [const("head_dim", np.array(head_dim, np.float32))], "score_scale")
    hidden = INPUT
    for layer in range(layers):
        p = f"L{layer}"
        q = node(
            "Reshape", [linear(hidden, f"{p}_q", d_model, d_model), heads_shape], f"{p}_q_heads"
        )
        q = node("Transpose", [q], f"{p}_q_t", perm=[0, 2, 1, 3])
        k = node(
            "Reshape", [linear(hidden, f"{p}_k", d_model, d_model), heads_shape], f"{p}_k_heads"
        )
        k = node("Transpose", [k], f"{p}_k_t", perm=[0, 2, 3, 1])
        v = node(
            "Reshape", [linear(hidden, f"{p}_v", d_model, d_model), heads_shape], f"{p}_v_heads"
        )
        v = node("Transpose", [v], f"{p}_v_t", perm=[0, 2, 1, 3])
        scores = node("MatMul", [q, k], f"{p}_scores")
        scaled = node("Div", [scores, scale], f"{p}_scaled")
        probs = node("Softmax", [scaled], f"{p}_softmax", axis=-1)
        context = node("MatMul", [probs, v], f"{p}_context")
        merged = node("Transpose", [context], f"{p}_merge_t", perm=[0, 2, 1, 3])
        merged = node("Reshape", [merged, model_shape], f"{p}_merge")
        attended = linear(merged, f"{p}_out", d_model, d_model)
        normed = norm(node("Add", [attended, hidden], f"{p}_residual1"), f"{p}_norm1")
        up = gelu(linear(normed, f"{p}_ff1", d_model, 4 * d_model), f"{p}_gelu")
        down = linear(up, f"{p}_ff2", 4 * d_model, d_model)
        hidden = norm(node("Add", [down, normed], f"{p}_residual2"), f"{p}_norm2")
    hidden = node("Identity", [hidden], "encoded")  # a redundant node basic optimization drops
    node("ReduceMean", [hidden], OUTPUT, axes=[1], keepdims=0)
    return save_encoder(nodes, inits, path, name="tiny_bert", seq=seq, d_model=d_model)


def make_inputs(
    path: Path, *, samples: int = 32, seq: int = 8, d_model: int = 32, seed: int = 1
) -> Path:
    return encoder_inputs(path, samples=samples, seq=seq, d_model=d_model, seed=seed)
