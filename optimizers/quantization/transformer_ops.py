"""The ops a transformer keeps in float under int8 (`keep_float`): attention's softmax and
the MatMuls whose two inputs are activations, and the normalizations with the residual Add
that feeds them. Their inputs have few, wide-ranging values (probabilities near 0 and 1,
scores and residual sums with outlier channels) that one per-tensor int8 scale cannot hold,
while their share of the compute is small."""

from __future__ import annotations

from collections.abc import Iterable

import onnx

from optimizers.quantization.node_selection import iter_nodes

#: Attention ops that are quantized as a whole (onnxruntime's fused forms).
FUSED_ATTENTION = frozenset({"Attention", "MultiHeadAttention", "GroupQueryAttention"})
NORMALIZATIONS = frozenset(
    {
        "LayerNormalization",
        "SkipLayerNormalization",
        "SimplifiedLayerNormalization",
        "SkipSimplifiedLayerNormalization",
        "EmbedLayerNormalization",
    }
)
#: Ops that only move, reshape or scale values between a projection and attention. The QDQ
#: quantizer puts int8 round trips on them (Reshape, Transpose...), which would feed the
#: score MatMuls rounded values: on the way into attention they stay float too.
_PASS_THROUGH = frozenset(
    {
        "Reshape",
        "Transpose",
        "Squeeze",
        "Unsqueeze",
        "Gather",
        "Slice",
        "Split",
        "Flatten",
        "Identity",
        "Cast",
        "Mul",
        "Div",
        "Add",
    }
)


def keep_float_nodes(model: onnx.ModelProto, groups: Iterable[str]) -> list[str]:
    """Names of the nodes of `model` that the `keep_float` groups keep in float."""
    wanted = set(groups)
    graph = model.graph
    constants = {init.name for init in graph.initializer}
    constants.update(
        output for node in graph.node if node.op_type == "Constant" for output in node.output
    )
    producers = {output: node for node in graph.node for output in node.output}
    names: list[str] = []
    for node in iter_nodes(graph):
        if "attention" in wanted and _is_attention(node, constants):
            names.append(node.name)
            if node.op_type in ("MatMul", "Gemm", "Softmax"):
                names.extend(_feeding_path(node, producers, constants))
        if "normalization" in wanted and node.op_type in NORMALIZATIONS:
            names.append(node.name)
            feeding = producers.get(node.input[0]) if node.input else None
            if feeding is not None and feeding.op_type == "Add":
                names.append(feeding.name)
    return list(dict.fromkeys(name for name in names if name))


def _feeding_path(
    node: onnx.NodeProto, producers: dict[str, onnx.NodeProto], constants: set[str]
) -> list[str]:
    """The pass-through nodes between an attention MatMul or softmax and what feeds it."""
    path: list[str] = []
    stack = [name for name in node.input[:2] if name not in constants]
    seen: set[str] = set()
    while stack:
        producer = producers.get(stack.pop())
        if producer is None or producer.name in seen or producer.op_type not in _PASS_THROUGH:
            continue
        seen.add(producer.name)
        path.append(producer.name)
        # Only data inputs: shapes and indices are integers that are never quantized.
        data = (
            producer.input[:1] if producer.op_type not in ("Mul", "Div", "Add") else producer.input
        )
        stack.extend(name for name in data if name and name not in constants)
    return path


def _is_attention(node: onnx.NodeProto, constants: set[str]) -> bool:
    if node.op_type == "Softmax" or node.op_type in FUSED_ATTENTION:
        return True
    if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2:
        return False
    return all(name not in constants for name in node.input[:2])
