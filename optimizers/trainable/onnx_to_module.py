"""ONNX models as trainable torch modules, for the passes that train or prune.

Worker side only: torch and onnx2torch are imported inside the functions. An ONNX model is
converted with onnx2torch into a `torch.fx.GraphModule` whose submodules are named after the
ONNX nodes, so users name layers as they appear in the ONNX graph and in sensitivity reports.
"""

from __future__ import annotations

import copy
import math
import sys
import types
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import onnx.numpy_helper

from optimizers.errors import UnsupportedError

if TYPE_CHECKING:
    import torch

#: Opset that models of a later opset are converted down to when onnx2torch cannot convert
#: them as they are.
CONVERTIBLE_OPSET = 17


def onnx_to_torch(path: Path) -> torch.nn.Module:
    """A trainable float32 torch module computing what the ONNX model at `path` computes.
    Raises UnsupportedError naming the first node whose op has no converter."""
    onnx2torch = _import_onnx2torch()
    from onnx2torch.node_converters.registry import get_converter

    proto = onnx.load(str(path))
    _inline_initializer_aliases(proto)
    missing = _without_converter(proto, get_converter)
    if missing is not None and _default_opset(proto) > CONVERTIBLE_OPSET:
        # torch's default exporter writes opset 18 and later, where some ops changed form
        # (ReduceMean takes its axes as an input); onnx2torch knows their opset 17 form.
        older = _older_opset(proto)
        if older is not None and _without_converter(older, get_converter) is None:
            proto, missing = older, None
    if missing is not None:
        node, version = missing
        domain = node.domain or ""
        label = f"'{node.name}' " if node.name else ""
        raise UnsupportedError(
            f"node {label}({domain + '::' if domain else ''}{node.op_type}, opset "
            f"{version}) cannot be converted to a trainable torch module; training passes "
            "(prune, distill) support the standard ONNX ops of common CNN, MLP and "
            "transformer layers"
        )
    _drop_needless_allowzero(proto)
    try:
        module = onnx2torch.convert(proto)
    except Exception as exc:  # onnx2torch raises plain exceptions for unsupported attributes
        raise UnsupportedError(
            f"the model cannot be converted to a trainable torch module: {type(exc).__name__}: "
            f"{exc}"
        ) from exc
    module.float()
    return module


def _without_converter(
    proto: onnx.ModelProto, get_converter: Any
) -> tuple[onnx.NodeProto, int] | None:
    """The first node onnx2torch has no converter for, with its opset, or None."""
    opset = _default_opset(proto)
    for node in proto.graph.node:
        domain = node.domain or ""
        version = opset if domain in ("", "ai.onnx") else _opset_of(proto, domain)
        try:
            get_converter(node.op_type, version, domain)
        except NotImplementedError:
            return node, version
    return None


def _older_opset(proto: onnx.ModelProto) -> onnx.ModelProto | None:
    """`proto` converted to CONVERTIBLE_OPSET, or None when ONNX cannot convert it."""
    from onnx import version_converter

    proto = _without_gelu(proto)
    try:
        older = version_converter.convert_version(proto, CONVERTIBLE_OPSET)
    except Exception:  # the converter has no adapter for some op: keep the original error
        return None
    for node in older.graph.node:
        # The opset 18 -> 17 adapter of the Reduce ops keeps an attribute opset 17 does not
        # have (ReduceSum has had it since 13); its default 0 is what opset 17 does anyway.
        if node.op_type.startswith("Reduce") and node.op_type != "ReduceSum":
            kept = [a for a in node.attribute if a.name != "noop_with_empty_axes" or a.i == 0]
            if len(kept) != len(node.attribute):
                return None
            del node.attribute[:]
            node.attribute.extend(a for a in kept if a.name != "noop_with_empty_axes")
    try:
        onnx.checker.check_model(older)
    except onnx.checker.ValidationError:
        return None
    return older


def _without_gelu(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `proto` with each opset 20 Gelu written out in ops that opset 17 has
    (0.5 x (1 + erf(x / sqrt 2)), or the tanh form for approximate="tanh"): Gelu has no
    earlier version to convert to, and torch's exporter writes it for nn.GELU."""
    if not any(_is_gelu(node) for node in proto.graph.node):
        return proto
    from onnx import helper, numpy_helper

    proto = copy.deepcopy(proto)
    graph = proto.graph
    constants = {
        "half": 0.5,
        "one": 1.0,
        "inv_sqrt2": 1.0 / math.sqrt(2.0),
        "tanh_scale": math.sqrt(2.0 / math.pi),
        "cubic": 0.044715,
    }
    prefix = "gelu_decomposed"
    for key, value in constants.items():
        graph.initializer.append(
            numpy_helper.from_array(np.array(value, dtype=np.float32), f"{prefix}_{key}")
        )
    nodes: list[onnx.NodeProto] = []
    for index, node in enumerate(graph.node):
        if not _is_gelu(node):
            nodes.append(node)
            continue
        x, (y,) = node.input[0], node.output
        tag = f"{prefix}_{index}"
        approximate = next(
            (a.s.decode() for a in node.attribute if a.name == "approximate"), "none"
        )
        if approximate == "tanh":
            inner = [
                helper.make_node("Mul", [x, x], [f"{tag}_x2"]),
                helper.make_node("Mul", [f"{tag}_x2", x], [f"{tag}_x3"]),
                helper.make_node("Mul", [f"{tag}_x3", f"{prefix}_cubic"], [f"{tag}_c"]),
                helper.make_node("Add", [x, f"{tag}_c"], [f"{tag}_s"]),
                helper.make_node("Mul", [f"{tag}_s", f"{prefix}_tanh_scale"], [f"{tag}_t"]),
                helper.make_node("Tanh", [f"{tag}_t"], [f"{tag}_e"]),
            ]
        else:
            inner = [
                helper.make_node("Mul", [x, f"{prefix}_inv_sqrt2"], [f"{tag}_t"]),
                helper.make_node("Erf", [f"{tag}_t"], [f"{tag}_e"]),
            ]
        nodes.extend(inner)
        nodes.extend(
            [
                helper.make_node("Add", [f"{tag}_e", f"{prefix}_one"], [f"{tag}_p"]),
                helper.make_node("Mul", [x, f"{tag}_p"], [f"{tag}_m"]),
                helper.make_node("Mul", [f"{tag}_m", f"{prefix}_half"], [y], name=node.name),
            ]
        )
    del graph.node[:]
    graph.node.extend(nodes)
    return proto


def _is_gelu(node: onnx.NodeProto) -> bool:
    return node.op_type == "Gelu" and node.domain in ("", "ai.onnx")


def _drop_needless_allowzero(proto: onnx.ModelProto) -> None:
    """Clear `allowzero=1` on Reshape nodes whose target shape is a constant without zeros:
    the flag only changes what a 0 in the shape means, and onnx2torch refuses it (torch's
    exporter sets it on every Reshape)."""
    graph = proto.graph
    constants = {tensor.name: tensor for tensor in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = node.attribute[0].t
    for node in graph.node:
        if node.op_type != "Reshape" or len(node.input) < 2 or node.input[1] not in constants:
            continue
        shape = onnx.numpy_helper.to_array(constants[node.input[1]])
        if (shape == 0).any():
            continue
        kept = [a for a in node.attribute if not (a.name == "allowzero" and a.i == 1)]
        if len(kept) != len(node.attribute):
            del node.attribute[:]
            node.attribute.extend(kept)


def _inline_initializer_aliases(proto: onnx.ModelProto) -> None:
    """Replace `Identity(initializer)` nodes by a copy of the initializer under the alias.

    The torch exporter stores equal weights once and aliases the copies with Identity nodes
    (freshly initialised batch norms fold into equal biases), while onnx2torch reads a
    layer's weights from initializers only."""
    graph = proto.graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    outputs = {value.name for value in graph.output}
    kept = []
    for node in graph.node:
        source = node.input[0] if node.op_type == "Identity" and node.input else None
        if source in initializers and node.output[0] not in outputs:
            alias = onnx.TensorProto()
            alias.CopyFrom(initializers[source])
            alias.name = node.output[0]
            graph.initializer.append(alias)
            initializers[alias.name] = alias
        else:
            kept.append(node)
    if len(kept) != len(graph.node):
        del graph.node[:]
        graph.node.extend(kept)


def module_names_by_node(path: Path) -> dict[str, str]:
    """ONNX node name -> name of the submodule that onnx2torch makes of it."""
    _import_onnx2torch()
    from onnx2torch.onnx_graph import OnnxGraph

    graph = OnnxGraph(onnx.load(str(path), load_external_data=False).graph)
    return {node.name: unique for unique, node in graph.nodes.items() if node.name}


def _default_opset(proto: onnx.ModelProto) -> int:
    return _opset_of(proto, "")


def _opset_of(proto: onnx.ModelProto, domain: str) -> int:
    for entry in proto.opset_import:
        if (entry.domain or "") in ({domain, "ai.onnx"} if domain == "" else {domain}):
            return int(entry.version)
    return 1


def _import_onnx2torch() -> Any:
    """onnx2torch imports torchvision for its NonMaxSuppression and RoiAlign converters only.
    torchvision wheels are built against one torch build and fail to import next to another
    (e.g. CPU torch), so a placeholder stands in when torchvision is not already loaded; those
    two ops are refused instead, which costs nothing here: neither is trainable."""
    if "torchvision" not in sys.modules:
        torchvision = types.ModuleType("torchvision")
        ops = types.ModuleType("torchvision.ops")

        def unavailable(*args: Any, **kwargs: Any) -> Any:
            raise UnsupportedError("NonMaxSuppression and RoiAlign cannot be trained")

        ops.nms = ops.roi_align = ops.box_convert = unavailable  # type: ignore[attr-defined]
        torchvision.ops = ops  # type: ignore[attr-defined]
        sys.modules["torchvision"] = torchvision
        sys.modules["torchvision.ops"] = ops
    import onnx2torch

    return onnx2torch
