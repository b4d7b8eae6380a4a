"""SmoothQuant (Xiao et al., 2023) on an ONNX graph: activation channels with outliers are
divided by a per-channel factor and the weights that read them multiplied by it, so int8
activations lose less while the float result stays the same.

onnxruntime's `quantize_static(extra_options={"SmoothQuant": True})` delegates to Intel
Neural Compressor's ONNX adaptor, a large dependency (its own tuning framework and data
loaders) that also does not cover dynamic quantization. The transform itself is small, so
it is done here on the graph: per-channel absmax of each weight layer's input over the
calibration samples, s_j = max|X_j|^alpha / max|W_j|^(1 - alpha), the division folded into a
LayerNormalization that feeds only those layers, else done by one inserted Mul.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from optimizers.measure.runtime import CPU

#: Smallest factor: a dead channel (absmax 0) must not become a division by zero.
_MIN_SCALE = 1e-5
SMOOTH_MUL_PREFIX = "SmoothQuant_Mul_"


@dataclass
class Smoothed:
    """What the transform changed."""

    model: onnx.ModelProto
    #: Weight layers whose input is smoothed.
    layers: list[str] = field(default_factory=list)
    #: Inserted Mul nodes (one per smoothed activation that could not be folded).
    inserted: list[str] = field(default_factory=list)
    #: LayerNormalization nodes that took the division into their scale and bias.
    folded: list[str] = field(default_factory=list)


@dataclass
class _Group:
    """One activation tensor and the weight layers that read it."""

    activation: str
    layers: list[onnx.NodeProto]


def activation_absmax(
    model: onnx.ModelProto, feeds: Iterable[dict[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """What `smooth` measures: the per-channel absmax, over `feeds`, of every activation it
    may smooth (none read when there is none)."""
    initializers = {init.name: init for init in model.graph.initializer}
    groups = _groups(model.graph, initializers)
    if not groups:
        return {}
    return _activation_absmax(model, [group.activation for group in groups], feeds)


def smooth(
    model: onnx.ModelProto,
    feeds: Iterable[dict[str, np.ndarray]] = (),
    *,
    alpha: float,
    absmax: dict[str, np.ndarray] | None = None,
) -> Smoothed:
    """A copy of `model` with SmoothQuant applied to every MatMul/Gemm with a constant 2-D
    weight, its activation ranges measured on `feeds`, or given as `absmax` (what
    `activation_absmax` measured on this model earlier)."""
    model = _copy(model)
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    groups = _groups(graph, initializers)
    if not groups:
        return Smoothed(model)
    if absmax is None:
        absmax = _activation_absmax(model, [group.activation for group in groups], feeds)
    result = Smoothed(model)
    producers = {output: node for node in graph.node for output in node.output}
    consumers = _consumers(graph)
    for index, group in enumerate(groups):
        x_max = absmax.get(group.activation)
        if x_max is None:
            continue
        weights = [_weight_rows(node, initializers) for node in group.layers]
        if any(w is None or w.shape[0] != x_max.shape[0] for w in weights):
            continue
        w_max = np.max([np.abs(w).max(axis=1) for w in weights if w is not None], axis=0)
        scale = np.power(np.maximum(x_max, _MIN_SCALE), alpha) / np.power(
            np.maximum(w_max, _MIN_SCALE), 1.0 - alpha
        )
        scale = np.clip(scale, _MIN_SCALE, None).astype(np.float32)
        for node in group.layers:
            _scale_weight_rows(node, initializers, scale)
        result.layers.extend(node.name for node in group.layers)
        producer = producers.get(group.activation)
        readers = consumers.get(group.activation, [])
        only_layers = {id(node) for node in readers} == {id(node) for node in group.layers}
        if only_layers and _fold_into_norm(producer, initializers, scale):
            assert producer is not None
            result.folded.append(producer.name)
            continue
        result.inserted.append(_insert_mul(graph, group, scale, index))
    _sort_topologically(graph)
    return result


def _groups(graph: onnx.GraphProto, initializers: dict[str, onnx.TensorProto]) -> list[_Group]:
    """Activations read by weight layers, each with all the weight layers reading it. A weight
    shared with another node is left alone (scaling it would change that node too)."""
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    by_activation: dict[str, _Group] = {}
    for node in graph.node:
        if not _is_weight_layer(node, initializers) or uses.get(node.input[1], 0) != 1:
            continue
        activation = node.input[0]
        if activation in initializers:
            continue
        group = by_activation.setdefault(activation, _Group(activation, []))
        group.layers.append(node)
    return list(by_activation.values())


def _is_weight_layer(node: onnx.NodeProto, initializers: dict[str, onnx.TensorProto]) -> bool:
    if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2:
        return False
    weight = initializers.get(node.input[1])
    if weight is None or len(weight.dims) != 2 or weight.data_type != onnx.TensorProto.FLOAT:
        return False
    if node.op_type == "Gemm":
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        return not attributes.get("transA", 0)
    return True


def _weight_rows(
    node: onnx.NodeProto, initializers: dict[str, onnx.TensorProto]
) -> np.ndarray | None:
    """The weight as [input channels, output channels]."""
    weight = numpy_helper.to_array(initializers[node.input[1]])
    return weight.T if _trans_b(node) else weight


def _scale_weight_rows(
    node: onnx.NodeProto, initializers: dict[str, onnx.TensorProto], scale: np.ndarray
) -> None:
    init = initializers[node.input[1]]
    weight = numpy_helper.to_array(init)
    scaled = weight * scale[None, :] if _trans_b(node) else weight * scale[:, None]
    init.CopyFrom(numpy_helper.from_array(scaled.astype(np.float32), init.name))


def _trans_b(node: onnx.NodeProto) -> bool:
    if node.op_type != "Gemm":
        return False
    return any(a.name == "transB" and a.i for a in node.attribute)


def _fold_into_norm(
    producer: onnx.NodeProto | None,
    initializers: dict[str, onnx.TensorProto],
    scale: np.ndarray,
) -> bool:
    """Divide a LayerNormalization's scale and bias by `scale`; False when it cannot."""
    if producer is None or producer.op_type != "LayerNormalization":
        return False
    if len(producer.output) > 1 and any(producer.output[1:]):
        return False  # mean / inv-std outputs are read elsewhere
    names = [name for name in producer.input[1:3] if name]
    tensors = [initializers.get(name) for name in names]
    if any(t is None for t in tensors) or any(
        numpy_helper.to_array(t).shape != scale.shape for t in tensors if t is not None
    ):
        return False
    for tensor in tensors:
        assert tensor is not None
        value = numpy_helper.to_array(tensor) / scale
        tensor.CopyFrom(numpy_helper.from_array(value.astype(np.float32), tensor.name))
    return True


def _insert_mul(graph: onnx.GraphProto, group: _Group, scale: np.ndarray, index: int) -> str:
    name = f"{SMOOTH_MUL_PREFIX}{index}"
    factor = f"{name}_factor"
    output = f"{name}_output"
    graph.initializer.append(numpy_helper.from_array((1.0 / scale).astype(np.float32), factor))
    graph.node.append(helper.make_node("Mul", [group.activation, factor], [output], name=name))
    for node in group.layers:
        node.input[0] = output
    return name


def _activation_absmax(
    model: onnx.ModelProto, names: list[str], feeds: Iterable[dict[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """Per-channel (last axis) absmax of the tensors `names` over every feed."""
    exposed = _copy(model)
    present = {output.name for output in exposed.graph.output}
    exposed.graph.output.extend(
        onnx.ValueInfoProto(name=name) for name in names if name not in present
    )
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    with tempfile.TemporaryDirectory(prefix="modelpress-smoothquant-") as tmp:
        path = Path(tmp) / "exposed.onnx"
        onnx.save(exposed, str(path))
        session = ort.InferenceSession(str(path), sess_options=options, providers=[CPU])
    absmax: dict[str, np.ndarray] = {}
    for feed in feeds:
        values = session.run(names, feed)
        for name, value in zip(names, values, strict=True):
            value = np.asarray(value)
            if value.dtype.kind != "f" or value.ndim == 0:
                continue
            channel = np.abs(value.reshape(-1, value.shape[-1])).max(axis=0)
            previous = absmax.get(name)
            absmax[name] = channel if previous is None else np.maximum(previous, channel)
    return absmax


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    for output in graph.output:
        readers.setdefault(output.name, []).append(onnx.NodeProto(name="<graph output>"))
    return readers


def _sort_topologically(graph: onnx.GraphProto) -> None:
    """Inserted nodes were appended at the end: put every node after its inputs' producers."""
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending = list(graph.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        progressed = False
        waiting = []
        for node in pending:
            if all(name in available for name in node.input):
                ordered.append(node)
                available.update(node.output)
                progressed = True
            else:
                waiting.append(node)
        if not progressed:  # a subgraph reads outer names: keep the remaining order
            ordered.extend(waiting)
            break
        pending = waiting
    copies = [onnx.NodeProto() for _ in ordered]
    for copy, node in zip(copies, ordered, strict=True):
        copy.CopyFrom(node)
    del graph.node[:]
    graph.node.extend(copies)


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy
