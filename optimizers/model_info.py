"""Read an ONNX model's metadata (inputs, outputs, opset, size) without running it.

Imports neither torch nor onnxruntime: the API calls this when a model is uploaded.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from optimizers.errors import InvalidModelError, UnsupportedError
from optimizers.external_data import external_data_locations
from optimizers.results import Dim, ModelInfo, TensorInfo

#: Operator domains a model may use. '' and 'ai.onnx' are standard ONNX, 'ai.onnx.ml' the
#: standard ML ops, 'com.microsoft' onnxruntime's built-in contrib ops (which quantized
#: models, including the ones modelpress produces, use). Any other domain names ops that
#: only a custom-op library could provide, and loading one would run native code that came
#: with the model; modelpress never registers such libraries, so these models are refused.
ALLOWED_OP_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft"})


def inspect_model(
    path: Path, *, check_domains: bool = False, allow_external_data: bool = True
) -> ModelInfo:
    """Check that `path` is a valid ONNX model and describe it. Uploads are checked more
    strictly: `check_domains` refuses custom operator domains (check_op_domains), and
    `allow_external_data` False refuses a model that keeps tensors in other files (a lone
    .onnx upload has no files beside it that it may refer to)."""
    try:
        size_bytes = path.stat().st_size
    except OSError as exc:
        raise InvalidModelError(f"cannot read the model file: {exc.strerror or exc}") from exc
    try:
        # External weights are not needed to describe the graph and may not be next to it.
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise InvalidModelError(
            f"the file is not an ONNX model (protobuf parsing failed: {exc}); "
            "export it with torch.onnx.export or another ONNX exporter"
        ) from exc
    if len(model.graph.node) == 0:
        raise InvalidModelError(
            "the ONNX model has an empty graph (no nodes); is the file complete?"
        )
    if check_domains:
        check_op_domains(model)
    if not allow_external_data:
        _refuse_external_data(model)
    try:
        # The path form also validates models over 2 GB and those with external data.
        onnx.checker.check_model(str(path))
    except Exception as exc:
        raise InvalidModelError(f"the ONNX checker rejected the model: {_first_line(exc)}") from exc

    initializer_names = {init.name for init in model.graph.initializer}
    inputs = [
        _tensor_info(value, kind="input")
        for value in model.graph.input
        # Older exporters list weights as graph inputs too; they are not fed by the caller.
        if value.name not in initializer_names
    ]
    if not inputs:
        raise InvalidModelError("the model has no inputs to feed; it cannot be benchmarked")
    outputs = [_tensor_info(value, kind="output") for value in model.graph.output]

    parameter_count = sum(math.prod(init.dims) for init in model.graph.initializer)
    parameter_count += sum(math.prod(sparse.dims) for sparse in model.graph.sparse_initializer)

    return ModelInfo(
        format="onnx",
        opset=_default_opset(model),
        ir_version=model.ir_version or None,
        producer=model.producer_name or None,
        inputs=inputs,
        outputs=outputs,
        parameter_count=int(parameter_count),
        size_bytes=size_bytes,
        op_types=dict(sorted(Counter(node.op_type for node in model.graph.node).items())),
    )


def check_op_domains(model: onnx.ModelProto) -> None:
    """Refuse a node (in the graph, a subgraph or a model-local function) whose operator
    comes from a domain outside ALLOWED_OP_DOMAINS. Calls of the model's own functions are
    allowed: their bodies are checked the same way."""
    local_functions = {(f.domain, f.name) for f in model.functions}

    def check(nodes: Iterable[onnx.NodeProto], where: str) -> None:
        for node in nodes:
            domain = node.domain
            if domain not in ALLOWED_OP_DOMAINS and (domain, node.op_type) not in local_functions:
                name = node.name or "(unnamed)"
                raise UnsupportedError(
                    f"node '{name}' ({where}) uses operator '{node.op_type}' from the custom "
                    f"domain '{domain}'; only the domains "
                    f"{sorted(ALLOWED_OP_DOMAINS)} are accepted, because other operators "
                    "need a custom-op library that modelpress does not load"
                )
            for attribute in node.attribute:
                graphs = [attribute.g] if attribute.HasField("g") else []
                for graph in [*graphs, *attribute.graphs]:
                    check(graph.node, f"in a subgraph of node '{node.name or node.op_type}'")

    check(model.graph.node, "in the main graph")
    for function in model.functions:
        check(function.node, f"in the model's function '{function.domain}.{function.name}'")


def _refuse_external_data(model: onnx.ModelProto) -> None:
    locations = external_data_locations(model)
    if locations:
        location, tensors = next(iter(locations.items()))
        raise InvalidModelError(
            f"tensor '{tensors[0].tensor}' keeps its data in a separate file "
            f"('{location[:200]}'), which a single .onnx upload cannot bring; upload a zip of "
            "the .onnx file and its external data files"
        )


def _default_opset(model: onnx.ModelProto) -> int | None:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return None


def _tensor_info(value: onnx.ValueInfoProto, *, kind: str) -> TensorInfo:
    if not value.type.HasField("tensor_type"):
        raise UnsupportedError(
            f"model {kind} '{value.name}' is not a tensor (it is a "
            f"{value.type.WhichOneof('value')}); only tensor inputs and outputs are supported"
        )
    tensor_type = value.type.tensor_type
    try:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)).name
    except Exception as exc:
        raise UnsupportedError(
            f"model {kind} '{value.name}' has an element type that numpy cannot represent "
            f"(ONNX type {tensor_type.elem_type})"
        ) from exc
    if not tensor_type.HasField("shape"):
        if kind == "input":
            raise UnsupportedError(
                f"model input '{value.name}' has no declared shape; re-export the model with "
                "input shapes (dynamic axes are fine)"
            )
        # An output's rank may be unknown until run time; an empty list stands for "unknown".
        return TensorInfo(name=value.name, dtype=dtype, shape=[])
    return TensorInfo(name=value.name, dtype=dtype, shape=[_dim(d) for d in tensor_type.shape.dim])


def _dim(dim: onnx.TensorShapeProto.Dimension) -> Dim:
    # Some converters (TensorFlow's, Keras') write a dynamic dimension as -1, and a few as 0.
    if dim.HasField("dim_value") and dim.dim_value > 0:
        return int(dim.dim_value)
    if dim.HasField("dim_param") and dim.dim_param:
        return str(dim.dim_param)
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
