"""Checks of a job spec against its model and datasets that can run before the job is queued.

Imports neither torch nor onnxruntime: the API runs these on every job submission.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from optimizers.batching import BatchLayout, batch_layout, field_hint
from optimizers.config import (
    DistillConfig,
    GraphOptimizeConfig,
    Int8Config,
    PassConfig,
    PipelineSpec,
    PruneConfig,
)
from optimizers.datasets import check_fits
from optimizers.errors import DatasetMismatchError, UnsupportedError
from optimizers.results import DatasetInfo, Dim, ModelInfo, TensorInfo

#: Input element types that modelpress can read from datasets and synthesize for benchmarks.
SUPPORTED_INPUT_DTYPES = frozenset(
    {
        "bool",
        "int8",
        "int16",
        "int32",
        "int64",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
        "float16",
        "float32",
        "float64",
    }
)


#: onnxruntime's int8 quantization works from opset 10; opset 10-12 models are upgraded to 13
#: when per-channel scales or static QDQ need it.
MIN_QUANTIZE_OPSET = 10


def check_spec(
    model: ModelInfo,
    spec: PipelineSpec,
    datasets: Mapping[str, DatasetInfo],
    *,
    models: Mapping[str, ModelInfo] | None = None,
) -> None:
    """Raise DatasetMismatchError or UnsupportedError for anything that would make the job fail
    for a reason known now. `datasets` maps every dataset id in the spec to its description,
    `models` every model id in the spec (distillation students) to its description."""
    models = models or {}
    for tensor in model.inputs:
        if tensor.dtype not in SUPPORTED_INPUT_DTYPES:
            raise UnsupportedError(
                f"model input '{tensor.name}' has element type {tensor.dtype}; only numeric and "
                "bool inputs are supported"
            )

    layout = batch_layout(model, spec.batch_axes())
    check_pass_order(spec.passes)
    for config in spec.passes:
        # Quantization upgrades opset 10-12 models to 13 where it needs to (per-channel scales,
        # static QDQ); older models predate onnxruntime's quantization support altogether.
        if isinstance(config, Int8Config) and (model.opset or 0) < MIN_QUANTIZE_OPSET:
            raise UnsupportedError(
                f"int8 quantization needs a model with opset {MIN_QUANTIZE_OPSET} or newer; this "
                f"model uses opset {model.opset}. Re-export the model with opset >= 13"
            )
        if isinstance(config, PruneConfig | DistillConfig):
            check_trainable_layout(model, layout, kind=config.kind)
        # Passes keep the model's inputs, so every pass's data must fit the original's inputs:
        # calibration, pruning's fine-tuning data, distillation data.
        for dataset_id in config.dataset_ids():
            check_fits(
                model, _dataset(datasets, dataset_id), purpose=_purpose(config), layout=layout
            )
        if isinstance(config, DistillConfig) and config.student.model_id is not None:
            check_student(model, _model(models, config.student.model_id))

    if spec.evaluate is not None:
        evaluate_data = _dataset(datasets, spec.evaluate.dataset_id)
        check_fits(
            model,
            evaluate_data,
            purpose="evaluate",
            need_labels=spec.evaluate.metric == "accuracy",
            layout=layout,
        )

    benchmark = spec.benchmark
    if layout.fixed is not None:
        wrong = [size for size in benchmark.batch_sizes if size != layout.fixed]
        if wrong:
            name, axis = next(
                (tensor.name, axis)
                for tensor in model.inputs
                if (axis := layout.axis(tensor.name)) is not None
                and isinstance(tensor.shape[axis], int)
            )
            raise UnsupportedError(
                f"model input '{name}' has a fixed batch size of {layout.fixed} (axis {axis}), "
                f"so benchmark.batch_sizes can only be [{layout.fixed}] (got "
                f"{benchmark.batch_sizes}); re-export the model with a dynamic batch axis to "
                "benchmark other sizes, or, if that axis is not the batch, set "
                f"{field_hint(name)} to the axis that is (null for none)"
            )

    given_shapes = benchmark.input_shapes or {}
    input_names = {tensor.name for tensor in model.inputs}
    unknown = sorted(set(given_shapes) - input_names)
    if unknown:
        raise DatasetMismatchError(
            f"benchmark.input_shapes names {unknown}, which are not model inputs; the model's "
            f"inputs are {sorted(input_names)}"
        )
    for tensor in model.inputs:
        if tensor.name in given_shapes:
            _check_given_shape(tensor, given_shapes[tensor.name], layout.axis(tensor.name))

    # With any dataset, benchmark inputs take their shapes from its rows (checked above).
    has_dataset = bool(spec.dataset_ids())
    if not has_dataset:
        for tensor in model.inputs:
            axis = layout.axis(tensor.name)
            open_axes = [
                index
                for index, dim in enumerate(tensor.shape)
                if index != axis and not isinstance(dim, int)
            ]
            if open_axes and tensor.name not in given_shapes:
                dims = ", ".join(
                    f"axis {index} ('{_dim_text(tensor.shape[index])}')" for index in open_axes
                )
                raise DatasetMismatchError(
                    f"model input '{tensor.name}' has symbolic dims ({dims}) besides its batch "
                    f"axis ({'none' if axis is None else axis}), so benchmark inputs need "
                    "concrete shapes: add an evaluate or calibration dataset, or set "
                    f'benchmark.input_shapes, e.g. {{"{tensor.name}": {_example(tensor)}}}'
                )


def check_pass_order(passes: Sequence[PassConfig]) -> None:
    """Refuse a pass that cannot read what a `graph_optimize` pass before it wrote:
    onnxruntime's int8 quantizers do not read the CPU-only operators of the `extended` level
    (their shape inference stops at them), and the training passes convert the graph to torch,
    which has no counterpart of onnxruntime's fused operators."""
    for index, earlier in enumerate(passes):
        if not isinstance(earlier, GraphOptimizeConfig):
            continue
        for later in passes[index + 1 :]:
            if isinstance(later, Int8Config) and earlier.level == "extended":
                raise UnsupportedError(
                    f"pass {index + 1} (graph_optimize, level 'extended') writes onnxruntime's "
                    f"CPU-only fused operators, which the int8 '{later.method}' quantization "
                    "cannot read; use level 'basic' before quantize (transformer_fusions works "
                    "with it), or put the extended graph_optimize after quantize"
                )
            fused = earlier.level == "extended" or earlier.transformer_fusions
            if isinstance(later, PruneConfig | DistillConfig) and fused:
                what = "level 'extended'" if earlier.level == "extended" else "transformer_fusions"
                raise UnsupportedError(
                    f"pass {index + 1} (graph_optimize with {what}) writes onnxruntime's fused "
                    f"operators, which the {later.kind} pass cannot convert to a trainable torch "
                    f"model; put graph_optimize after {later.kind}"
                )


def check_trainable_layout(model: ModelInfo, layout: BatchLayout, *, kind: str) -> None:
    """Training passes convert the model to torch and export it back with the batch on axis 0
    of every input: a model whose inputs carry it elsewhere, or not at all, is refused."""
    for tensor in model.inputs:
        axis = layout.axis(tensor.name)
        if axis != 0:
            where = "has no batch axis" if axis is None else f"has its batch on axis {axis}"
            raise UnsupportedError(
                f"the {kind} pass trains the model in batches on axis 0 of every input, but "
                f"model input '{tensor.name}' {where}; quantize such a model instead"
            )


def _purpose(config: PassConfig) -> str:
    if isinstance(config, PruneConfig):
        return "prune fine-tuning"
    if isinstance(config, DistillConfig):
        return "distill"
    return f"{config.kind} pass"


def _model(models: Mapping[str, ModelInfo], model_id: str) -> ModelInfo:
    try:
        return models[model_id]
    except KeyError:
        raise DatasetMismatchError(f"student model '{model_id}' was not found") from None


def check_student(teacher: ModelInfo, student: ModelInfo) -> None:
    """The student takes the teacher's inputs and replaces it: same input names and types,
    the same sizes apart from the batch axis, as many outputs, and a first output of the same
    width. Checked when a job is submitted and again in the worker; a dimension or output
    list a description leaves open (a PyTorch upload's outputs) is not compared."""
    want = {tensor.name: tensor for tensor in teacher.inputs}
    have = {tensor.name: tensor for tensor in student.inputs}
    if sorted(want) != sorted(have):
        raise DatasetMismatchError(
            f"the distillation student's inputs are {sorted(have)} but the teacher's are "
            f"{sorted(want)}; the student must take the same inputs (same names) as the teacher"
        )
    for name, tensor in have.items():
        other = want[name]
        if tensor.dtype != other.dtype:
            raise DatasetMismatchError(
                f"the distillation student's input '{name}' is {tensor.dtype} but the "
                f"teacher's is {other.dtype}"
            )
        if tensor.shape and other.shape and not _same_sizes(tensor.shape, other.shape):
            raise DatasetMismatchError(
                f"the distillation student's input '{name}' has shape {tensor.shape} but the "
                f"teacher's has {other.shape}; they may differ in the batch axis only"
            )
    if not (teacher.outputs and student.outputs):
        return
    if len(student.outputs) != len(teacher.outputs):
        raise UnsupportedError(
            f"the distillation student has {len(student.outputs)} output(s) but the teacher has "
            f"{len(teacher.outputs)}; the student replaces the teacher, so it needs the same "
            "outputs"
        )
    if not _same_sizes(student.outputs[0].shape, teacher.outputs[0].shape):
        raise DatasetMismatchError(
            f"the distillation student's first output has shape {student.outputs[0].shape} but "
            f"the teacher's has {teacher.outputs[0].shape}; distillation matches them class by "
            "class"
        )


def _same_sizes(shape: list[Dim], other: list[Dim]) -> bool:
    """Same rank and the same fixed sizes after the batch axis; symbolic sizes match any."""
    return len(shape) == len(other) and all(
        not (isinstance(a, int) and isinstance(b, int)) or a == b
        for a, b in zip(shape[1:], other[1:], strict=True)
    )


def _dataset(datasets: Mapping[str, DatasetInfo], dataset_id: str) -> DatasetInfo:
    try:
        return datasets[dataset_id]
    except KeyError:
        raise DatasetMismatchError(f"dataset '{dataset_id}' was not found") from None


def _check_given_shape(tensor: TensorInfo, shape: list[int], batch_axis: int | None) -> None:
    if len(shape) != len(tensor.shape):
        raise DatasetMismatchError(
            f"benchmark.input_shapes['{tensor.name}'] has rank {len(shape)} but the model input "
            f"has rank {len(tensor.shape)} (shape {tensor.shape}); include the batch axis"
        )
    for axis, (want, got) in enumerate(zip(tensor.shape, shape, strict=True)):
        # The batch axis is replaced by each benchmark batch size, so its value does not matter.
        if axis != batch_axis and isinstance(want, int) and want != got:
            raise DatasetMismatchError(
                f"benchmark.input_shapes['{tensor.name}'] has {got} on axis {axis} but the model "
                f"input needs {want} (model shape {tensor.shape})"
            )


def _dim_text(dim: Dim) -> str:
    return "?" if dim is None else str(dim)


def _example(tensor: TensorInfo) -> list[int]:
    return [dim if isinstance(dim, int) else 1 for dim in tensor.shape]
