"""The distill pass: the pass's input model teaches a smaller student, which replaces it.

Worker side only. The teacher is the input ONNX model converted with
`torch_bridge.onnx_to_torch`; the student is an uploaded ONNX model or the teacher narrowed by
structured pruning. It is trained with `training.fit` and exported with the teacher's input
and output names. torch is imported inside the functions: the registry imports this module
for every job, quantization included.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any

from optimizers.checks import check_student
from optimizers.config import DistillConfig
from optimizers.errors import DatasetMismatchError, UnsupportedError
from optimizers.model_info import inspect_model
from optimizers.results import ModelInfo, PassContext, PassResult
from optimizers.trainable.module_to_onnx import export_to_onnx
from optimizers.trainable.onnx_to_module import onnx_to_torch

if TYPE_CHECKING:
    import torch

    from optimizers.trainable.training import FitReport, TrainingData

_STAGE = "distilling"
#: Share of the pass's progress span spent before training starts.
_PREPARE_SHARE = 0.05
#: Share at which exporting starts.
_EXPORT_SHARE = 0.97
#: Batch size of the example inputs that trace the teacher when deriving a student.
_EXAMPLE_BATCH = 2
_CHECKPOINT = "distill.pt"


def distill(model_path: Path, config: DistillConfig, ctx: PassContext) -> PassResult:
    """Train the student `config` names on the input model's outputs (and the dataset's labels,
    when it has them); the result is ctx.workdir / "student.onnx"."""
    from optimizers.trainable.training import fit, load_training_data

    start, end = ctx.progress_span
    span = end - start
    teacher_info = inspect_model(model_path)
    dataset = ctx.datasets.get(config.dataset_id)
    if dataset is None:
        raise DatasetMismatchError(f"dataset '{config.dataset_id}' was not found")
    for tensor in teacher_info.inputs:
        open_axes = [
            axis for axis, dim in enumerate(tensor.shape) if axis and not isinstance(dim, int)
        ]
        if open_axes:
            # The student is exported with fixed sizes; refuse before minutes of training.
            raise UnsupportedError(
                f"distillation needs fixed input sizes except the batch axis; input "
                f"'{tensor.name}' has symbolic axes {open_axes} (shape {tensor.shape})"
            )
    # Read before any conversion, so that a dataset that does not fit fails fast.
    data = load_training_data(dataset, teacher_info)

    ctx.progress(_STAGE, start, "converting the teacher to a torch module")
    teacher = onnx_to_torch(model_path)
    teacher.eval()
    input_names = [tensor.name for tensor in teacher_info.inputs]
    notes: list[str] = []
    source: dict[str, Any]
    if config.student.model_id is not None:
        ctx.progress(_STAGE, start, f"loading the student '{config.student.model_id}'")
        student = _uploaded_student(config.student.model_id, teacher_info, ctx)
        source = {"source": "model_id", "model_id": config.student.model_id}
    else:
        ctx.progress(_STAGE, start, "deriving a narrower student from the teacher")
        student, shrunk = _derived_student(teacher, data, input_names, ratio=config.student.ratio)
        source = {"source": "derived", "derive": config.student.derive}
        source.update(ratio=config.student.ratio, **shrunk)

    report = fit(
        student,
        data,
        config,
        ctx,
        input_names=input_names,
        teacher=teacher,
        stage=_STAGE,
        progress_span=(start + _PREPARE_SHARE * span, start + _EXPORT_SHARE * span),
        checkpoint_name=_CHECKPOINT,
    )

    ctx.progress(_STAGE, start + _EXPORT_SHARE * span, "exporting the student to ONNX")
    output = ctx.workdir / "student.onnx"
    student_info = export_to_onnx(student, output, like=teacher_info)
    ctx.progress(_STAGE, end, "student exported")

    notes.extend(_notes(report, teacher_info, student_info, config))
    details: dict[str, Any] = {
        "student": source,
        "teacher_parameters": teacher_info.parameter_count,
        "student_parameters": student_info.parameter_count,
        "metric": report.metric,
        "validation_samples": report.validation_samples,
        "teacher_score": report.teacher_score,
        "student_score": report.best_score,
        "training": report.as_details(),
    }
    return PassResult(model_path=output, notes=notes, details=details)


def _uploaded_student(model_id: str, teacher: ModelInfo, ctx: PassContext) -> torch.nn.Module:
    from optimizers.trainable.structured import linearize

    path = ctx.models.get(model_id)
    if path is None:
        raise DatasetMismatchError(f"student model '{model_id}' was not found")
    info = inspect_model(path)
    check_student(teacher, info)
    module = onnx_to_torch(path)
    # MatMul weights are constants (buffers) after conversion; as Linear layers they train.
    linearize(module)
    order = [tensor.name for tensor in info.inputs]
    wanted = [tensor.name for tensor in teacher.inputs]
    if order != wanted:
        return _reordered(module, [wanted.index(name) for name in order])
    return module


def _reordered(module: torch.nn.Module, positions: list[int]) -> torch.nn.Module:
    """`module` called with the teacher's input order: argument i of the student is the
    teacher's input `positions[i]`."""
    import torch

    class Reordered(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.student = module

        def forward(self, *inputs: torch.Tensor) -> Any:
            return self.student(*[inputs[position] for position in positions])

    return Reordered()


def _derived_student(
    teacher: torch.nn.Module, data: TrainingData, input_names: list[str], *, ratio: float
) -> tuple[torch.nn.Module, dict[str, int]]:
    """A copy of the teacher with `ratio` of the channels / hidden units of every layer but
    the output layers removed. Deterministic, so a resumed attempt rebuilds the architecture
    its checkpoint was written for."""
    import torch

    from optimizers.trainable.structured import linearize, shrink

    student = copy.deepcopy(teacher)
    linearize(student)
    examples = tuple(
        torch.from_numpy(data.inputs[name][:_EXAMPLE_BATCH].copy()) for name in input_names
    )
    counts = shrink(student, examples, ratio=ratio, keep=[])
    return student, counts


def _notes(
    report: FitReport, teacher: ModelInfo, student: ModelInfo, config: DistillConfig
) -> list[str]:
    notes: list[str] = []
    if report.checkpoint_ignored is not None:
        notes.append(
            f"a checkpoint of an earlier attempt was not used: {report.checkpoint_ignored}; "
            "training started over"
        )
    if report.resumed_from_epoch is not None:
        notes.append(f"resumed from the checkpoint of epoch {report.resumed_from_epoch}")
    if teacher.parameter_count:
        share = student.parameter_count / teacher.parameter_count
        notes.append(
            f"the student has {student.parameter_count:,} parameters, {share:.1%} of the "
            f"teacher's {teacher.parameter_count:,}"
        )
    held_out = "held-out" if config.validation_split > 0 else "training"
    if report.metric == "accuracy":
        teacher_score = report.teacher_score or 0.0
        kept = (
            f", so it keeps {report.best_score / teacher_score:.1%} of the teacher's accuracy"
            if teacher_score > 0
            else ""
        )
        notes.append(
            f"validation accuracy on {report.validation_samples} {held_out} samples: student "
            f"{report.best_score:.1%}, teacher {teacher_score:.1%}{kept}"
        )
    else:
        notes.append(
            f"the student agrees with the teacher's top class on {report.best_score:.1%} of "
            f"{report.validation_samples} {held_out} samples (dataset without labels)"
        )
    if report.stopped_early:
        notes.append(
            f"training stopped early after epoch {report.epochs_run} of {config.epochs}: no "
            f"better validation {report.metric} for {config.patience} epochs"
        )
    if report.best_epoch == 0:
        notes.append(
            "training never beat the student's initial weights on the validation samples, so "
            "they were kept"
        )
    elif report.best_epoch != report.epochs_run:
        notes.append(f"kept the weights of epoch {report.best_epoch}, the best on validation")
    return notes
