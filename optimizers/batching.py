"""Which axis of each model input carries the batch: decided once, from the model and the
spec's `inputs`, and used alike by the checks, evaluation, calibration and the benchmark.

Imports neither torch nor onnxruntime: the API runs the same decision on every submission.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from optimizers.errors import DatasetMismatchError, UnsupportedError
from optimizers.results import ModelInfo, TensorInfo


@dataclass(frozen=True)
class BatchLayout:
    """The batch axis of every input (None: the input has none and is fed as it is), and the
    batch size the model fixes, if a batch axis has a fixed size."""

    axes: dict[str, int | None]
    fixed: int | None = None

    def axis(self, name: str) -> int | None:
        return self.axes.get(name)

    def batched(self, model: ModelInfo) -> list[str]:
        """Inputs that take one row per sample, in the model's order."""
        return [tensor.name for tensor in model.inputs if self.axes.get(tensor.name) is not None]

    def unbatched(self, model: ModelInfo) -> list[str]:
        """Inputs without a batch axis: scalars, fixed-size state."""
        return [tensor.name for tensor in model.inputs if self.axes.get(tensor.name) is None]

    def as_json(self) -> dict[str, int | None]:
        return dict(self.axes)


def field_hint(name: str) -> str:
    """Where a user settles an input's batch axis in a job spec."""
    return f'inputs["{name}"].batch_axis'


def batch_layout(model: ModelInfo, declared: Mapping[str, int | None] | None = None) -> BatchLayout:
    """The batch axis of each input of `model`. `declared` (the spec's `inputs`, name ->
    batch_axis) wins. Otherwise: a scalar has none; a dynamic axis 0 is the batch; an input
    whose axis 0 is fixed takes the batch on the dynamic axis that shares its name with the
    other inputs' batch axis, has none when all its sizes are fixed while other inputs have a
    dynamic batch (fixed-size state), and keeps a fixed batch on axis 0 when no input has a
    dynamic one (a model exported for one batch size). Anything else is ambiguous: the error
    names the input and the field that settles it."""
    declared = dict(declared or {})
    unknown = sorted(set(declared) - {tensor.name for tensor in model.inputs})
    if unknown:
        raise DatasetMismatchError(
            f"inputs names {unknown}, which are not model inputs; the model's inputs are "
            f"{[tensor.name for tensor in model.inputs]}"
        )
    axes: dict[str, int | None] = {}
    pending: list[TensorInfo] = []
    for tensor in model.inputs:
        if tensor.name in declared:
            axes[tensor.name] = _declared_axis(tensor, declared[tensor.name])
        elif not tensor.shape:
            axes[tensor.name] = None
        elif not isinstance(tensor.shape[0], int):
            axes[tensor.name] = 0
        else:
            pending.append(tensor)

    batch_dims = [
        tensor.shape[axis] for tensor in model.inputs if (axis := axes.get(tensor.name)) is not None
    ]
    dynamic_batch = [dim for dim in batch_dims if not isinstance(dim, int)]
    batch_names = {dim for dim in dynamic_batch if isinstance(dim, str)}
    for tensor in pending:
        open_axes = [axis for axis, dim in enumerate(tensor.shape) if not isinstance(dim, int)]
        if not dynamic_batch:
            axes[tensor.name] = 0  # a model exported for one batch size
        elif not open_axes:
            axes[tensor.name] = None  # fixed-size input next to batched ones: fed as is
        else:
            named = [axis for axis in open_axes if tensor.shape[axis] in batch_names]
            if len(named) != 1:
                raise UnsupportedError(
                    f"model input '{tensor.name}' (shape {_shape_text(tensor)}) has a fixed "
                    f"size {tensor.shape[0]} on axis 0 and dynamic axes {open_axes}, so which "
                    "axis carries the batch cannot be told from the model; set "
                    f"{field_hint(tensor.name)} in the job spec to its batch axis, or to null "
                    "if the input has none"
                )
            axes[tensor.name] = named[0]
    return BatchLayout(axes=axes, fixed=_fixed_batch(model, axes))


def _declared_axis(tensor: TensorInfo, axis: int | None) -> int | None:
    if axis is not None and axis >= len(tensor.shape):
        raise DatasetMismatchError(
            f"{field_hint(tensor.name)} is {axis} but model input '{tensor.name}' has rank "
            f"{len(tensor.shape)} (shape {_shape_text(tensor)}); axes count from 0"
        )
    return axis


def _fixed_batch(model: ModelInfo, axes: Mapping[str, int | None]) -> int | None:
    fixed: dict[str, int] = {}
    for tensor in model.inputs:
        axis = axes.get(tensor.name)
        if axis is not None and isinstance(tensor.shape[axis], int):
            fixed[tensor.name] = int(tensor.shape[axis])  # type: ignore[arg-type]
    sizes = set(fixed.values())
    if len(sizes) > 1:
        listing = ", ".join(f"'{name}': {size}" for name, size in fixed.items())
        raise UnsupportedError(
            f"the model's inputs fix different batch sizes ({listing}); set "
            "`inputs` in the job spec to say which axis of each input is its batch axis "
            "(null for inputs that have none)"
        )
    return sizes.pop() if sizes else None


def _shape_text(tensor: TensorInfo) -> str:
    return "[" + ", ".join("?" if dim is None else str(dim) for dim in tensor.shape) + "]"
