"""Single nodes of an int8 model moved to float16 (mixed precision's `fp16` fallback and
`per_node` precision `fp16`), with casts at their edges."""

from __future__ import annotations

from pathlib import Path

import onnx

from optimizers.errors import QuantizationError
from optimizers.external_data import needs_external_data, save_model


def nodes_to_fp16(
    path: Path,
    kept: set[str],
    workdir: Path,
    notes: list[str],
    *,
    asked_by: str = "fallback 'fp16'",
    instead: str = "use fallback 'fp32'",
) -> Path:
    """Convert the nodes kept out of int8 to float16, with casts at their edges; the model's
    inputs and outputs stay float32."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(path))
    for index, node in enumerate(model.graph.node):
        # The converter takes a list of node names to leave alone; every node needs one.
        node.name = node.name or f"{node.op_type}_unnamed_{index}"
    names = [node.name for node in model.graph.node]
    missing = sorted(kept - set(names))
    if missing:
        raise QuantizationError(
            f"{asked_by}: nodes {missing[:5]} kept float are not in the quantized graph "
            f"under those names; {instead}"
        )
    try:
        converted = convert_float_to_float16(
            model,
            keep_io_types=True,
            node_block_list=[name for name in names if name not in kept],
        )
    except Exception as exc:
        raise QuantizationError(
            f"{asked_by}: onnxruntime could not convert the kept nodes to float16 ({exc}); "
            f"{instead}"
        ) from exc
    output = workdir / f"{path.stem}.fp16-fallback.onnx"
    save_model(converted, output, external_data=needs_external_data(path))
    notes.append(f"nodes kept out of int8 run in float16: {sorted(kept)[:10]}")
    return output


def single_nodes_to_fp16(path: Path, names: list[str], workdir: Path, notes: list[str]) -> Path:
    """Run exactly the nodes `names` in float16: their float weights stored as float16, their
    other float inputs cast to float16 and their outputs cast back to float32, so that the
    rest of the graph is untouched (onnxruntime's converter, by contrast, changes every value
    type and puts casts around every node it leaves alone)."""
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    by_name = {node.name: node for node in graph.node}
    missing = [name for name in names if name not in by_name]
    if missing:
        raise QuantizationError(
            f"per_node 'fp16': nodes {missing[:5]} are not in the quantized graph under those "
            "names; choose 'float' for them"
        )
    initializers = {init.name: init for init in graph.initializer}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    added: list[onnx.NodeProto] = []
    for name in names:
        node = by_name[name]
        for index, source in enumerate(node.input):
            init = initializers.get(source)
            if init is not None and init.data_type != TensorProto.FLOAT:
                continue  # integer inputs (shapes, axes) stay as they are
            if init is not None and readers.get(source, 0) == 1:
                half = numpy_helper.to_array(init).astype("float16")
                init.CopyFrom(numpy_helper.from_array(half, init.name))
                continue
            if not source:
                continue
            cast = f"{name}_input{index}_fp16"
            added.append(
                helper.make_node(
                    "Cast", [source], [cast], name=f"{cast}_cast", to=TensorProto.FLOAT16
                )
            )
            node.input[index] = cast
        for index, target in enumerate(node.output):
            half_output = f"{target}_fp16"
            node.output[index] = half_output
            added.append(
                helper.make_node(
                    "Cast", [half_output], [target], name=f"{target}_to_fp32", to=TensorProto.FLOAT
                )
            )
    nodes = list(graph.node) + added
    ordered = _topological(nodes, graph)
    del graph.node[:]
    graph.node.extend(ordered)
    output = workdir / f"{path.stem}.fp16-nodes.onnx"
    save_model(model, output, external_data=needs_external_data(path))
    notes.append(f"{len(names)} node(s) run in float16 as per_node asks: {names[:10]}")
    return output


def _topological(nodes: list[onnx.NodeProto], graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = nodes, list[onnx.NodeProto]()
    while pending:
        ready = [n for n in pending if all(name in available for name in n.input)]
        if not ready:  # names read from an outer scope: keep the rest in order
            return ordered + pending
        for node in ready:
            available.update(node.output)
        ordered.extend(ready)
        ready_ids = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in ready_ids]
    copies = []
    for node in ordered:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copies.append(copy)
    return copies
