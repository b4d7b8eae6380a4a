"""Which nodes a partial-scope quantization touches: `include` / `exclude` selections checked
against a model graph and resolved to node names. Imports onnx only."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import onnx

from optimizers.config import NodeSelection, QuantizeConfig
from optimizers.errors import QuantizationError

#: Ops in a quantized graph that show a value went through reduced precision.
QUANTIZED_OPS = frozenset(
    {
        "QuantizeLinear",
        "DequantizeLinear",
        "DynamicQuantizeLinear",
        "MatMulInteger",
        "ConvInteger",
        "DynamicQuantizeMatMul",
        "MatMulIntegerToFloat",
        "MatMulNBits",
        "GatherBlockQuantized",
    }
)

#: How many valid names or op types an error message lists.
_EXAMPLES = 8


def iter_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node of `graph` and of its subgraphs (If branches, Loop and Scan bodies)."""
    for node in graph.node:
        yield node
        for subgraph in subgraphs(node):
            yield from iter_nodes(subgraph)


def subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The graphs held in `node`'s attributes (If branches, Loop and Scan bodies)."""
    graphs: list[onnx.GraphProto] = []
    for attribute in node.attribute:
        if attribute.type == onnx.AttributeProto.GRAPH:
            graphs.append(attribute.g)
        elif attribute.type == onnx.AttributeProto.GRAPHS:
            graphs.extend(attribute.graphs)
    return graphs


def node_names(model: onnx.ModelProto) -> set[str]:
    return {node.name for node in iter_nodes(model.graph) if node.name}


def op_types(model: onnx.ModelProto) -> set[str]:
    return {node.op_type for node in iter_nodes(model.graph)}


def selected_names(config: QuantizeConfig) -> list[str]:
    """Node names the user typed in `include.nodes` and `exclude.nodes`."""
    names: list[str] = []
    for selection in (config.include, config.exclude):
        if selection is not None:
            names.extend(selection.nodes)
    return list(dict.fromkeys(names))


def unknown_names(model: onnx.ModelProto, names: Iterable[str]) -> list[str]:
    known = node_names(model)
    return [name for name in names if name not in known]


def check_op_types(model: onnx.ModelProto, config: QuantizeConfig) -> None:
    """QuantizationError when `include` or `exclude` names op types the model does not have."""
    present = op_types(model)
    for label, selection in (("include", config.include), ("exclude", config.exclude)):
        if selection is None:
            continue
        missing = [op for op in selection.op_types if op not in present]
        if missing:
            raise QuantizationError(
                f"{label}.op_types names {listing(missing)}, which the model does not have; "
                f"its op types are: {listing(sorted(present))}"
            )


def unknown_names_error(model: onnx.ModelProto, missing: list[str]) -> QuantizationError:
    named = [node.name for node in iter_nodes(model.graph) if node.name]
    return QuantizationError(
        f"the model has no node named {listing(missing)}; node names are those of the uploaded "
        f"model (e.g. {listing(named) if named else 'none: its nodes are unnamed'})"
    )


def name_unnamed_nodes(model: onnx.ModelProto) -> bool:
    """Give every unnamed node a unique name, so that selections by op type can be passed to
    onnxruntime as node names. Returns whether anything changed."""
    taken = node_names(model)
    changed = False
    for index, node in enumerate(iter_nodes(model.graph)):
        if node.name:
            continue
        name = f"{node.op_type}_{index}"
        while name in taken:
            name += "_"
        node.name = name
        taken.add(name)
        changed = True
    return changed


@dataclass
class Resolved:
    """A selection in onnxruntime's terms, for the graph that will be quantized."""

    op_types_to_quantize: list[str] | None = None
    nodes_to_quantize: list[str] | None = None
    nodes_to_exclude: list[str] = field(default_factory=list)

    def selects(self, node: onnx.NodeProto) -> bool:
        """Whether onnxruntime may quantize `node` (as its quantizers decide)."""
        if self.nodes_to_quantize is not None and node.name not in self.nodes_to_quantize:
            return False
        if self.op_types_to_quantize is not None and node.op_type not in self.op_types_to_quantize:
            return False
        return node.name not in self.nodes_to_exclude


def resolve(model: onnx.ModelProto, config: QuantizeConfig) -> Resolved:
    """`include` is a union of op types and node names; `exclude` is removed from it."""
    include = config.include or NodeSelection()
    exclude = config.exclude or NodeSelection()
    resolved = Resolved()
    if include.op_types and include.nodes:
        wanted = set(include.op_types)
        by_type = [node.name for node in iter_nodes(model.graph) if node.op_type in wanted]
        resolved.nodes_to_quantize = list(dict.fromkeys([*include.nodes, *by_type]))
    elif include.nodes:
        resolved.nodes_to_quantize = list(include.nodes)
    elif include.op_types:
        resolved.op_types_to_quantize = list(include.op_types)
    excluded_types = set(exclude.op_types)
    by_type = [node.name for node in iter_nodes(model.graph) if node.op_type in excluded_types]
    resolved.nodes_to_exclude = list(dict.fromkeys([*exclude.nodes, *by_type]))
    if getattr(config, "method", None) == "dynamic":
        _follow_gemm_rewrite(model, resolved)
    return resolved


#: onnxruntime's dynamic quantizer rewrites each Gemm as a MatMul named `<gemm>_MatMul` (and
#: an Add) before it matches node names (onnxruntime/quantization/onnx_model.py,
#: replace_gemm_with_matmul): a Gemm selected by its own name is selected by that name too.
_GEMM_AS_MATMUL = "_MatMul"


def with_gemm_rewrite(model: onnx.ModelProto, names: list[str]) -> list[str]:
    """`names`, each Gemm's followed by the name the dynamic quantizer gives it."""
    gemms = {node.name for node in iter_nodes(model.graph) if node.op_type == "Gemm"}
    return list(
        dict.fromkeys(
            alias
            for name in names
            for alias in ([name, name + _GEMM_AS_MATMUL] if name in gemms else [name])
        )
    )


def _follow_gemm_rewrite(model: onnx.ModelProto, resolved: Resolved) -> None:
    resolved.nodes_to_exclude = with_gemm_rewrite(model, resolved.nodes_to_exclude)
    if resolved.nodes_to_quantize is not None:
        resolved.nodes_to_quantize = with_gemm_rewrite(model, resolved.nodes_to_quantize)


def left_float(model: onnx.ModelProto, resolved: Resolved, quantizable: Iterable[str]) -> list[str]:
    """Names of the nodes that the selection keeps in float: every node the user excluded by
    name, and every node of a quantizable op type outside the selection."""
    ops = set(quantizable)
    explicit = set(resolved.nodes_to_exclude)
    return [
        node.name
        for node in iter_nodes(model.graph)
        if node.name in explicit or (node.op_type in ops and not resolved.selects(node))
    ]


def listing(items: list[str], examples: int = _EXAMPLES) -> str:
    """`items` quoted for a message, the first `examples` of them and how many more."""
    shown = ", ".join(f"'{item}'" for item in items[:examples])
    more = len(items) - examples
    return f"{shown} and {more} more" if more > 0 else shown


def check_and_name(model: onnx.ModelProto, config: QuantizeConfig) -> None:
    """Fail on selected op types or node names the model lacks, then give every unnamed
    node a name so that selections can be passed to the quantizers as node names."""
    check_op_types(model, config)
    missing = unknown_names(model, selected_names(config))
    if missing:
        raise unknown_names_error(model, missing)
    name_unnamed_nodes(model)
