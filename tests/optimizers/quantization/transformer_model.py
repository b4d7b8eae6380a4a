"""A tiny post-norm transformer encoder built node by node, with the outlier activation
channels trained transformers have (a few LayerNorm scales far above the rest), for the
transformer int8 tests. Names of the attention nodes are known to the tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from tests.models.encoder_io import INPUT, OUTPUT, encoder_inputs, save_encoder

#: Channels whose LayerNorm scale is `outlier` times the others'.
OUTLIER_CHANNELS = (3, 17)


def attention_nodes(layers: int = 2) -> dict[str, list[str]]:
    """Names of each layer's score MatMul, softmax and context MatMul."""
    return {
        "scores": [f"L{layer}_scores" for layer in range(layers)],
        "softmax": [f"L{layer}_softmax" for layer in range(layers)],
        "context": [f"L{layer}_context" for layer in range(layers)],
    }


def make_transformer(
    path: Path,
    *,
    layers: int = 2,
    d_model: int = 32,
    heads: int = 4,
    seq: int = 16,
    outlier: float = 60.0,
    seed: int = 0,
) -> Path:
    """embeddings [N, seq, d_model] -> `layers` post-norm encoder layers (Q/K/V, softmax
    attention, output projection, ReLU feed-forward 4x) -> mean over tokens -> `pooled`."""
    rng = np.random.default_rng(seed)
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    head_dim = d_model // heads

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(op: str, inputs: list[str], name: str, **attrs: object) -> str:
        nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def linear(x: str, name: str, rows: int, cols: int) -> str:
        w = (rng.standard_normal((rows, cols)) / np.sqrt(rows)).astype(np.float32)
        b = (rng.standard_normal(cols) * 0.02).astype(np.float32)
        product = node("MatMul", [x, const(f"{name}.weight", w)], name)
        return node("Add", [product, const(f"{name}.bias", b)], f"{name}_bias")

    def norm(x: str, name: str, *, outliers: bool) -> str:
        gamma = (1.0 + 0.1 * rng.standard_normal(d_model)).astype(np.float32)
        beta = (0.05 * rng.standard_normal(d_model)).astype(np.float32)
        if outliers:
            for channel in OUTLIER_CHANNELS:
                gamma[channel] *= outlier
                beta[channel] = outlier / 4
        return node(
            "LayerNormalization",
            [x, const(f"{name}.gamma", gamma), const(f"{name}.beta", beta)],
            name,
            axis=-1,
            epsilon=1e-5,
        )

    heads_shape = const("heads_shape", np.array([0, seq, heads, head_dim], dtype=np.int64))
    model_shape = const("model_shape", np.array([0, seq, d_model], dtype=np.int64))
    scale = const("score_scale", np.array(1.0 / np.sqrt(head_dim), dtype=np.float32))
    hidden = INPUT
    for layer in range(layers):
        p = f"L{layer}"
        last = layer == layers - 1

        def split(x: str, name: str) -> str:
            shaped = node("Reshape", [x, heads_shape], f"{name}_heads")
            return node("Transpose", [shaped], f"{name}_t", perm=[0, 2, 1, 3])

        q = split(linear(hidden, f"{p}_q", d_model, d_model), f"{p}_q")
        k = split(linear(hidden, f"{p}_k", d_model, d_model), f"{p}_k")
        v = split(linear(hidden, f"{p}_v", d_model, d_model), f"{p}_v")
        k_t = node("Transpose", [k], f"{p}_k_tt", perm=[0, 1, 3, 2])
        scores = node("MatMul", [q, k_t], f"{p}_scores")
        scaled = node("Mul", [scores, scale], f"{p}_scaled")
        probs = node("Softmax", [scaled], f"{p}_softmax", axis=-1)
        context = node("MatMul", [probs, v], f"{p}_context")
        merged = node("Transpose", [context], f"{p}_merge_t", perm=[0, 2, 1, 3])
        merged = node("Reshape", [merged, model_shape], f"{p}_merge")
        attended = linear(merged, f"{p}_out", d_model, d_model)
        residual = node("Add", [hidden, attended], f"{p}_residual1")
        normed = norm(residual, f"{p}_norm1", outliers=True)
        up = node("Relu", [linear(normed, f"{p}_ff1", d_model, 4 * d_model)], f"{p}_relu")
        down = linear(up, f"{p}_ff2", 4 * d_model, d_model)
        residual2 = node("Add", [normed, down], f"{p}_residual2")
        hidden = norm(residual2, f"{p}_norm2", outliers=not last)
    node("ReduceMean", [hidden], OUTPUT, axes=[1], keepdims=0)
    return save_encoder(nodes, inits, path, name="tiny_encoder", seq=seq, d_model=d_model)


def make_inputs(
    path: Path, *, samples: int = 64, seq: int = 16, d_model: int = 32, seed: int = 1
) -> Path:
    return encoder_inputs(path, samples=samples, seq=seq, d_model=d_model, seed=seed)
