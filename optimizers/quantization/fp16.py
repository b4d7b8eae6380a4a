"""float16 conversion with onnxruntime's converter, float32 inputs and outputs, and a check
run that refuses a model whose float16 outputs overflow."""

from __future__ import annotations

import heapq
import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper
from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

from optimizers.batching import batch_layout
from optimizers.config import Fp16Config
from optimizers.datasets import check_fits, inspect_dataset
from optimizers.errors import OptimizerError, QuantizationError
from optimizers.external_data import needs_external_data, save_model
from optimizers.measure.benchmark import make_feeds
from optimizers.measure.runtime import CPU
from optimizers.model_info import inspect_model
from optimizers.quantization import node_selection as selection
from optimizers.results import ModelInfo, PassContext, PassResult

logger = logging.getLogger(__name__)

#: The largest finite float16 value.
FP16_MAX = 65504.0
#: Rows run through both models to check the float16 one.
CHECK_ROWS = 4


def quantize_fp16(model_path: Path, config: Fp16Config, ctx: PassContext) -> PassResult:
    start, end = ctx.progress_span
    ctx.progress("quantizing", start, "converting to float16")
    notes: list[str] = []
    external_data = needs_external_data(model_path)
    model = onnx.load(str(model_path))  # external data is read from the model's folder
    selection.check_and_name(model, config)

    large = _nodes_reading_large_constants(model)
    excluded: list[str] = []
    if config.scope == "partial":
        resolved = selection.resolve(model, config)
        excluded = [
            node.name for node in selection.iter_nodes(model.graph) if not resolved.selects(node)
        ]
    blocked_ops = set(DEFAULT_OP_BLOCK_LIST)
    by_op = [node.name for node in selection.iter_nodes(model.graph) if node.op_type in blocked_ops]
    keep_fp32 = list(dict.fromkeys([*large, *excluded]))
    all_nodes = sum(1 for _ in selection.iter_nodes(model.graph))
    if large:
        notes.append(
            f"kept {len(large)} node(s) in float32 because they read constants beyond the "
            f"float16 range (|value| > {FP16_MAX:g}): {large[:5]}"
        )
    float_model = onnx.ModelProto()
    float_model.CopyFrom(model)
    try:
        converted = convert_float_to_float16(
            model,
            keep_io_types=True,
            op_block_list=list(DEFAULT_OP_BLOCK_LIST),
            node_block_list=keep_fp32,
        )
    except Exception as exc:
        raise QuantizationError(f"onnxruntime could not convert the model to fp16: {exc}") from exc
    _drop_cast_round_trips(converted)
    _sort_topologically(converted.graph)
    ctx.workdir.mkdir(parents=True, exist_ok=True)
    output = ctx.workdir / f"{model_path.stem}.fp16.onnx"
    save_model(converted, output, external_data=external_data)
    ctx.progress("quantizing", start + 0.6 * (end - start), "checking the float16 model")

    fp32_nodes = list(dict.fromkeys([*keep_fp32, *by_op]))
    check = _check(
        float_model, inspect_model(model_path), output, set(fp32_nodes), config, ctx, notes
    )
    ctx.progress("quantizing", end, "conversion finished")
    details: dict[str, Any] = {
        "method": "fp16",
        "scope": config.scope,
        "fp16_nodes": all_nodes - len(fp32_nodes),
        "fp32_nodes": fp32_nodes,
        "large_constant_nodes": large,
        "excluded_nodes": excluded,
        "check": check,
    }
    return PassResult(model_path=output, notes=notes, details=details)


def _nodes_reading_large_constants(model: onnx.ModelProto) -> list[str]:
    """Nodes with an initializer or Constant input whose values float16 cannot hold."""
    large: set[str] = set()
    for init in model.graph.initializer:
        if _too_large(numpy_helper.to_array(init)):
            large.add(init.name)
    for node in selection.iter_nodes(model.graph):
        if node.op_type == "Constant":
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None and _too_large(numpy_helper.to_array(value)):
                large.update(node.output)
    return [
        node.name
        for node in selection.iter_nodes(model.graph)
        if node.op_type != "Constant" and large.intersection(node.input)
    ]


def _too_large(array: np.ndarray) -> bool:
    if array.dtype.kind != "f" or array.size == 0:
        return False
    finite = array[np.isfinite(array)]
    return bool(finite.size and np.abs(finite).max() > FP16_MAX)


def _check(
    model: onnx.ModelProto,
    info: ModelInfo,
    converted: Path,
    fp32_nodes: set[str],
    config: Fp16Config,
    ctx: PassContext,
    notes: list[str],
) -> dict[str, Any] | None:
    """Refuse a float16 model that overflows on a few inputs. Two checks: float32 tensors
    beyond the float16 range where float16 computes (onnxruntime's CPU provider runs some
    float16 ops in float32, which hides such overflows there but not on GPUs), then NaN or
    Inf in the float16 model's outputs where float32 gives finite values."""
    source, feeds = _check_inputs(info, ctx)
    if feeds is None:
        notes.append(
            "the float16 model was not checked on data: the model has symbolic dims and no "
            "dataset was given to shape its inputs"
        )
        return None
    try:
        values = _all_values(model, feeds)
        result = _run(converted, feeds)
    except OptimizerError:
        raise
    except Exception as exc:
        raise QuantizationError(f"the float16 model does not run in onnxruntime: {exc}") from exc

    overflow = _overflowing(model, values, fp32_nodes)
    if overflow:
        tensors, peak, culprits = overflow
        keep = list(dict.fromkeys([*(config.exclude.nodes if config.exclude else []), *culprits]))
        others = f" (and {len(tensors) - 1} more tensors)" if len(tensors) > 1 else ""
        raise QuantizationError(
            f"fp16 overflow: tensor '{tensors[0]}'{others} reaches |x| = {peak:.3g} in float32, "
            f"beyond the float16 maximum {FP16_MAX:g}, so float16 gives inf there; keep nodes "
            f"{culprits[:10]} in fp32 with scope 'partial' and exclude.nodes {keep[:10]}, or "
            "use method 'dynamic' or 'static'"
        )
    worst = 0.0
    for tensor, got in zip(info.outputs, result, strict=True):
        want = values[tensor.name]
        if want.dtype.kind != "f":
            continue
        broken = ~np.isfinite(got) & np.isfinite(want)
        if broken.any():
            kinds = " and ".join(
                kind
                for kind, present in (("inf", np.isinf(got).any()), ("NaN", np.isnan(got).any()))
                if present
            )
            raise QuantizationError(
                f"fp16 overflow: output '{tensor.name}' has {kinds} values in float16 "
                f"({int(broken.sum())} of {broken.size}) where float32 gives finite ones; keep "
                "the nodes that lead to it in fp32 with scope 'partial' and exclude.nodes, or "
                "use method 'dynamic' or 'static'"
            )
        both = np.isfinite(got) & np.isfinite(want)
        if both.any():
            diff = np.abs(got[both].astype(np.float64) - want[both].astype(np.float64))
            worst = max(worst, float(diff.max()))
    return {"inputs": source, "samples": _rows(feeds), "max_abs_diff": worst}


def _all_values(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every main-graph tensor of the float32 model on `feeds`."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    present = {value.name for value in probe.graph.output}
    produced = [name for node in probe.graph.node for name in node.output if name]
    probe.graph.output.extend(
        onnx.ValueInfoProto(name=name) for name in produced if name not in present
    )
    session = ort.InferenceSession(probe.SerializeToString(), providers=[CPU])
    names = [value.name for value in session.get_outputs()]
    return {
        name: np.asarray(value)
        for name, value in zip(names, session.run(None, feeds), strict=True)
        if isinstance(value, np.ndarray)
    }


def _overflowing(
    model: onnx.ModelProto, values: dict[str, np.ndarray], fp32_nodes: set[str]
) -> tuple[list[str], float, list[str]] | None:
    """Tensors beyond the float16 range that a float16 node produces or reads, their peak,
    and the nodes (producers and readers) that must stay float32 for them to survive."""
    tensors: list[str] = []
    involved: list[str] = []
    peak = 0.0
    for node in model.graph.node:
        for tensor in node.output:
            value = values.get(tensor)
            if value is None or not _too_large(value):
                continue
            readers = [other.name for other in model.graph.node if tensor in other.input]
            if all(name in fp32_nodes for name in (node.name, *readers)):
                continue
            tensors.append(tensor)
            involved.extend([node.name, *readers])
            finite = value[np.isfinite(value)]
            peak = max(peak, float(np.abs(finite).max()))
    if not tensors:
        return None
    return tensors, peak, list(dict.fromkeys(involved))


def _check_inputs(info: ModelInfo, ctx: PassContext) -> tuple[str, dict[str, np.ndarray] | None]:
    """Rows of the first given dataset that fits the model, else seeded random inputs."""
    try:
        layout = batch_layout(info, ctx.batch_axes)
    except OptimizerError:
        return "none", None
    batch = layout.fixed or CHECK_ROWS
    for dataset_id, path in ctx.datasets.items():
        try:
            check_fits(info, inspect_dataset(path), purpose="fp16 check", layout=layout)
        except OptimizerError:
            continue
        feeds = make_feeds(info, batch, dataset=path, input_shapes=None, layout=layout)
        return f"dataset '{dataset_id}'", feeds
    try:
        return "random", make_feeds(
            info, batch, dataset=None, input_shapes=None, seed=0, layout=layout
        )
    except OptimizerError:
        return "none", None


def _run(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=[CPU])
    return [np.asarray(value) for value in session.run(None, feeds)]


def _rows(feeds: dict[str, np.ndarray]) -> int:
    first = next(iter(feeds.values()), None)
    return int(first.shape[0]) if first is not None and first.ndim else 1


def _drop_cast_round_trips(model: onnx.ModelProto) -> None:
    """The converter casts every float32 node's output to float16 and back, even between two
    float32 nodes; such a round trip overflows exactly where a node was kept in float32 to
    avoid it. Readers of the round trip read the float32 tensor directly instead."""
    graph = model.graph
    outputs = {value.name for value in graph.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    float32 = {
        value.name
        for value in [*graph.value_info, *graph.input]
        if value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    }
    dropped: list[onnx.NodeProto] = []
    for down in list(graph.node):
        if not _is_cast(down, onnx.TensorProto.FLOAT16) or down.output[0] in outputs:
            continue
        if down.input[0] not in float32:
            continue
        ups = readers.get(down.output[0], [])
        if not ups or not all(_is_cast(up, onnx.TensorProto.FLOAT) for up in ups):
            continue
        for up in ups:
            if up.output[0] in outputs:
                continue
            for reader in readers.get(up.output[0], []):
                for index, name in enumerate(reader.input):
                    if name == up.output[0]:
                        reader.input[index] = down.input[0]
            dropped.append(up)
        if all(up in dropped for up in ups):
            dropped.append(down)
    for node in dropped:
        graph.node.remove(node)


def _sort_topologically(graph: onnx.GraphProto) -> None:
    """Order the nodes so that each comes after the producers of what it reads, as the ONNX
    checker requires: the converter appends the casts of the graph inputs at the end. Nodes
    already in order keep it; a subgraph's reads of outer values count as inputs."""
    producer = {name: index for index, node in enumerate(graph.node) for name in node.output}
    needs = [
        {producer[name] for name in _reads(node) if name in producer and producer[name] != index}
        for index, node in enumerate(graph.node)
    ]
    readers: list[list[int]] = [[] for _ in graph.node]
    for index, before in enumerate(needs):
        for producer_index in before:
            readers[producer_index].append(index)
    waiting = [len(before) for before in needs]
    ready = [index for index, count in enumerate(waiting) if count == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        index = heapq.heappop(ready)  # the earliest node that can go next keeps its place
        order.append(index)
        for reader in readers[index]:
            waiting[reader] -= 1
            if waiting[reader] == 0:
                heapq.heappush(ready, reader)
    if len(order) != len(graph.node):
        raise QuantizationError("the float16 model has a cycle; its nodes cannot be ordered")
    if order != list(range(len(graph.node))):
        nodes = [graph.node[index] for index in order]
        del graph.node[:]
        graph.node.extend(nodes)


def _reads(node: onnx.NodeProto) -> set[str]:
    """The values `node` reads: its inputs, and whatever its subgraphs read."""
    names = {name for name in node.input if name}
    for subgraph in selection.subgraphs(node):
        for inner in subgraph.node:
            names |= _reads(inner)
    return names


def _is_cast(node: onnx.NodeProto, to: int) -> bool:
    return node.op_type == "Cast" and any(a.name == "to" and a.i == to for a in node.attribute)
