"""Trained torch modules exported back to ONNX with the TorchScript exporter, with a dynamic
batch axis, the original's input and output names, and the graph simplified when that keeps
its outputs. Worker side only (torch is imported inside the functions)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import onnx.numpy_helper

from optimizers.errors import InvalidModelError, UnsupportedError
from optimizers.model_info import inspect_model
from optimizers.quantization import node_selection as selection
from optimizers.results import ModelInfo

if TYPE_CHECKING:
    import torch

#: Opset of models exported from torch by the training passes.
EXPORT_OPSET = 17
#: Name of the batch axis in exported models.
BATCH_AXIS = "batch"


def export_to_onnx(
    module: torch.nn.Module,
    path: Path,
    *,
    like: ModelInfo,
    example_batch: int = 2,
) -> ModelInfo:
    """Export `module` to `path` with the input and output names of the model described by
    `like` (the model it was converted from), batch axis dynamic. Returns the new model's
    description; raises InvalidModelError when the export fails."""
    import torch

    examples = tuple(
        torch.zeros(_example_shape(tensor.shape, example_batch), dtype=_torch_dtype(tensor.dtype))
        for tensor in like.inputs
    )
    # The exporter refuses some valid ONNX names (numbers such as '188', which torch gives
    # outputs exported without names); placeholders go in, the real names are put back after.
    input_names = [f"modelpress_input_{index}" for index in range(len(like.inputs))]
    output_names = [f"modelpress_output_{index}" for index in range(len(like.outputs))]
    dynamic_axes: dict[str, dict[int, str]] = {name: {0: BATCH_AXIS} for name in input_names}
    dynamic_axes.update({name: {0: BATCH_AXIS} for name in output_names})
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            torch.onnx.export(
                module,
                examples,
                str(path),
                input_names=input_names,
                output_names=output_names,
                dynamic_axes=dynamic_axes,
                opset_version=max(EXPORT_OPSET, like.opset or 0),
                do_constant_folding=True,
                dynamo=False,
            )
    except Exception as exc:
        raise InvalidModelError(
            f"exporting the trained torch module back to ONNX failed: {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        module.train(was_training)
    proto = onnx.load(str(path), load_external_data=False)
    _rename_values(
        proto.graph,
        {
            **dict(zip(input_names, (tensor.name for tensor in like.inputs), strict=True)),
            **dict(zip(output_names, (tensor.name for tensor in like.outputs), strict=True)),
        },
    )
    onnx.save(_simplified(proto, like), str(path))
    return inspect_model(path)


def _simplified(proto: onnx.ModelProto, like: ModelInfo) -> onnx.ModelProto:
    """`proto` with constants folded and no-op nodes (Identity, Casts to the same type)
    removed by onnxscript's optimizer, when that gives a valid model with fewer nodes that
    computes the same outputs; else `proto`. Each export of a converted module adds such
    nodes, so a pipeline of training passes would otherwise grow the file pass by pass."""
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer):
        return proto
    try:
        from onnxscript import optimizer

        simpler = optimizer.optimize(copy.deepcopy(proto))
        onnx.checker.check_model(simpler)
    except Exception:  # an optimizer failure only costs the simplification
        return proto
    if len(simpler.graph.node) >= len(proto.graph.node):
        return proto
    return simpler if _same_outputs(proto, simpler, like) else proto


def _same_outputs(first: onnx.ModelProto, second: onnx.ModelProto, like: ModelInfo) -> bool:
    """Whether both models give the same outputs, to float tolerance, on the benchmark's
    seeded random inputs of batch 3 for a model like `like`."""
    import onnxruntime as ort

    from optimizers.measure.benchmark import make_feeds

    try:
        feeds = make_feeds(like, 3, dataset=None, input_shapes=None)
        results = [
            ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
                None, feeds
            )
            for model in (first, second)
        ]
    except Exception:  # no inputs to make, or either fails on them: keep the model as exported
        return False
    for want, got in zip(*results, strict=True):
        want, got = np.asarray(want), np.asarray(got)
        if want.shape != got.shape:
            return False
        if np.issubdtype(want.dtype, np.floating):
            scale = float(np.abs(want).max()) if want.size else 0.0
            if not np.allclose(got, want, rtol=1e-4, atol=1e-5 * max(1.0, scale)):
                return False
        elif not np.array_equal(got, want):
            return False
    return True


def _rename_values(graph: onnx.GraphProto, renames: dict[str, str]) -> None:
    """Rename values of `graph` (and their uses in subgraphs) as `renames` says; a value that
    already holds one of the new names is renamed out of the way first."""
    taken = set(renames.values()) - set(renames)
    existing = _value_names(graph)
    moves = dict(renames)
    for index, name in enumerate(sorted(existing & taken)):
        moves[name] = f"{name}__{index}"
        while moves[name] in existing:
            moves[name] += "_"
    _apply_renames(graph, moves)


def _value_names(graph: onnx.GraphProto) -> set[str]:
    names = {value.name for value in [*graph.input, *graph.output, *graph.value_info]}
    names |= {tensor.name for tensor in graph.initializer}
    for node in graph.node:
        names |= set(node.output)
    return names


def _apply_renames(graph: onnx.GraphProto, moves: dict[str, str]) -> None:
    for value in [*graph.input, *graph.output, *graph.value_info]:
        value.name = moves.get(value.name, value.name)
    for tensor in graph.initializer:
        tensor.name = moves.get(tensor.name, tensor.name)
    for node in graph.node:
        for index, name in enumerate(node.input):
            node.input[index] = moves.get(name, name)
        for index, name in enumerate(node.output):
            node.output[index] = moves.get(name, name)
        for subgraph in selection.subgraphs(node):
            _apply_renames(subgraph, moves)


def _example_shape(shape: list[Any], batch: int) -> list[int]:
    """Batch axis `batch`; other symbolic dims are refused, since the export fixes them."""
    dims: list[int] = []
    for axis, dim in enumerate(shape):
        if isinstance(dim, int):
            dims.append(batch if axis == 0 else dim)
        elif axis == 0:
            dims.append(batch)
        else:
            raise UnsupportedError(
                f"training passes need fixed input sizes except the batch axis; axis {axis} is "
                f"'{dim}'"
            )
    return dims


def _torch_dtype(name: str) -> Any:
    import torch

    return getattr(torch, name)
