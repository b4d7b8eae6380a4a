"""Weight-only int8: Conv/MatMul/Gemm weights stored as int8 with a DequantizeLinear in front,
so the file shrinks about 4x while activations and compute stay float. Needs no data."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from optimizers.config import Int8WeightOnlyConfig
from optimizers.external_data import needs_external_data, save_model
from optimizers.model_info import inspect_model
from optimizers.quantization import node_selection as selection
from optimizers.quantization.integer import upgrade_opset
from optimizers.results import PassContext, PassResult

#: Ops whose input 1 is a weight, and how to find its output-channel axis.
WEIGHT_OPS = frozenset({"Conv", "MatMul", "Gemm"})


@dataclass
class WeightsOnlyResult:
    quantized_weights: list[str] = field(default_factory=list)
    quantized_nodes: list[str] = field(default_factory=list)
    excluded_nodes: list[str] = field(default_factory=list)


def quantize_weights(
    model: onnx.ModelProto, config: Int8WeightOnlyConfig, resolved: selection.Resolved
) -> WeightsOnlyResult:
    """Rewrite `model` in place: each selected node's constant float weight becomes an int8
    (or uint8) initializer and a symmetric DequantizeLinear, per tensor or per output channel."""
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    graph_inputs = {value.name for value in graph.input}
    result = WeightsOnlyResult()
    dequantized: dict[str, str] = {}  # float weight name -> DequantizeLinear output
    new_nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        weight = _constant_weight(node, initializers, graph_inputs)
        if weight is None:
            continue
        if not resolved.selects(node):
            result.excluded_nodes.append(node.name)
            continue
        if weight.name not in dequantized:
            array = numpy_helper.to_array(weight)
            axis = _channel_axis(node, array) if config.per_channel else None
            dequant, inits = _dequantize_node(weight.name, array, axis, config.weight_type)
            graph.initializer.extend(inits)
            new_nodes.append(dequant)
            dequantized[weight.name] = dequant.output[0]
            result.quantized_weights.append(weight.name)
        node.input[1] = dequantized[weight.name]
        result.quantized_nodes.append(node.name)

    still_used = {name for node in graph.node for name in node.input} | {
        value.name for value in graph.output
    }
    still_used |= _subgraph_inputs(graph)
    for name in dequantized:
        if name not in still_used:
            graph.initializer.remove(initializers[name])
    # DequantizeLinear nodes read only initializers, so they can run first.
    for position, dequant in enumerate(new_nodes):
        graph.node.insert(position, dequant)
    result.excluded_nodes.extend(
        name
        for name in resolved.nodes_to_exclude
        if name not in result.excluded_nodes and name in selection.node_names(model)
    )
    return result


def needs_opset_13(config: Int8WeightOnlyConfig) -> bool:
    """DequantizeLinear's `axis` (per-channel scales) appeared in opset 13."""
    return config.per_channel


def _constant_weight(
    node: onnx.NodeProto, initializers: dict[str, onnx.TensorProto], graph_inputs: set[str]
) -> onnx.TensorProto | None:
    if node.op_type not in WEIGHT_OPS or len(node.input) < 2:
        return None
    weight = initializers.get(node.input[1])
    # An initializer that is also a graph input can be overridden at run time: not constant.
    if weight is None or weight.name in graph_inputs or weight.data_type != TensorProto.FLOAT:
        return None
    return weight


def _channel_axis(node: onnx.NodeProto, array: np.ndarray) -> int | None:
    """The weight's output-channel axis, or None where per-channel makes no sense."""
    if array.ndim < 2:
        return None
    if node.op_type == "Conv":
        return 0
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    return array.ndim - 1  # MatMul: [..., K, N]


def _dequantize_node(
    name: str, array: np.ndarray, axis: int | None, weight_type: str
) -> tuple[onnx.NodeProto, list[onnx.TensorProto]]:
    if axis is None:
        peak = np.abs(array).max(initial=0.0)
    else:
        others = tuple(i for i in range(array.ndim) if i != axis)
        peak = np.abs(array).max(axis=others, initial=0.0)
    scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
    shape = [1] * array.ndim
    if axis is not None:
        shape[axis] = -1
    levels = np.clip(np.rint(array / scale.reshape(shape)), -127, 127)
    if weight_type == "uint8":
        quantized = (levels + 128).astype(np.uint8)
        zero_point = np.full(scale.shape, 128, np.uint8)
    else:
        quantized = levels.astype(np.int8)
        zero_point = np.zeros(scale.shape, np.int8)
    inits = [
        numpy_helper.from_array(quantized, f"{name}_quantized"),
        numpy_helper.from_array(scale, f"{name}_scale"),
        numpy_helper.from_array(zero_point, f"{name}_zero_point"),
    ]
    node = helper.make_node(
        "DequantizeLinear",
        [init.name for init in inits],
        [f"{name}_dequantized"],
        name=f"{name}_DequantizeLinear",
    )
    if axis is not None:
        node.attribute.append(helper.make_attribute("axis", axis))
    return node, inits


def _subgraph_inputs(graph: onnx.GraphProto) -> set[str]:
    """Names read inside subgraphs, which may refer to the outer graph's initializers."""
    names: set[str] = set()
    for node in selection.iter_nodes(graph):
        names.update(node.input)
    return names


def save(model: onnx.ModelProto, path: Path, *, external_data: bool = False) -> None:
    save_model(model, path, external_data=external_data)


def quantize_int8_weight_only(
    model_path: Path, config: Int8WeightOnlyConfig, ctx: PassContext
) -> PassResult:
    """The `int8_weight_only` pass: every selected weight int8, the rest of the model as is."""
    start, end = ctx.progress_span
    ctx.progress("quantizing", start, "quantizing weights")
    notes: list[str] = []
    details: dict[str, Any] = {}
    stem = model_path.stem
    external_data = needs_external_data(model_path)
    if config.per_channel:
        info = inspect_model(model_path)
        model_path = upgrade_opset(model_path, config, ctx.workdir, info, notes, details)
    model = onnx.load(str(model_path))  # external data is read from the model's folder
    selection.check_and_name(model, config)
    resolved = selection.resolve(model, config)
    done = quantize_weights(model, config, resolved)
    if not done.quantized_weights:
        notes.append(
            "no weight was quantized: no selected Conv, MatMul or Gemm node has a constant "
            "float weight; the output is the float model"
        )
    ctx.workdir.mkdir(parents=True, exist_ok=True)
    output = ctx.workdir / f"{stem}.weights-{config.weight_type}.onnx"
    save(model, output, external_data=external_data)
    ctx.progress("quantizing", end, "quantization finished")
    details |= {
        "method": config.method,
        "scope": config.scope,
        "weights_only": True,
        "per_channel": config.per_channel,
        "weight_type": config.weight_type,
        "quantized_weights": len(done.quantized_weights),
        "quantized_nodes": len(done.quantized_nodes),
        "excluded_nodes": done.excluded_nodes,
        "pre_processed": "skipped",
    }
    return PassResult(model_path=output, notes=notes, details=details)
