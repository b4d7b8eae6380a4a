"""One training loop for the passes that train: fine-tuning after pruning and distillation.

Worker side only (imports torch). Trains a classifier on an in-memory `.npz` dataset with
cross-entropy on labels and/or a distillation loss against a teacher, validates each epoch,
keeps the best weights, stops early, and checkpoints every epoch so a retried job resumes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from optimizers.config import TrainingSettings
from optimizers.datasets import LABELS
from optimizers.errors import DatasetMismatchError, InvalidDatasetError, UnsupportedError
from optimizers.results import ModelInfo, PassContext
from optimizers.trainable import training_checkpoints as checkpoints

#: Progress reports per epoch while training (besides the one at the end of each epoch).
_PROGRESS_PER_EPOCH = 4


@dataclass
class TrainingData:
    inputs: dict[str, np.ndarray]  # model input name -> all samples (sample axis first)
    labels: np.ndarray | None  # int64 class ids, or None

    @property
    def num_samples(self) -> int:
        return len(next(iter(self.inputs.values())))


def load_training_data(path: Path, model: ModelInfo) -> TrainingData:
    """Read the whole `.npz` dataset at `path` for training `model` (never unpickling).
    Float arrays are cast to the dtype of the model input they feed; raises
    DatasetMismatchError naming what does not fit."""
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InvalidDatasetError(f"cannot read the training dataset: {exc}") from exc
    with archive:
        names = list(archive.files)
        inputs: dict[str, np.ndarray] = {}
        for tensor in model.inputs:
            if tensor.name not in names:
                have = ", ".join(f"'{n}'" for n in names if n != LABELS) or "none"
                raise DatasetMismatchError(
                    f"training dataset has no array for model input '{tensor.name}' (it has: "
                    f"{have}); name each array after the model input it feeds"
                )
            inputs[tensor.name] = _fitting_array(
                _read(archive, tensor.name), tensor.name, tensor.dtype, tensor.shape
            )
        labels = _read(archive, LABELS) if LABELS in names else None

    counts = {name: len(array) for name, array in inputs.items()}
    if len(set(counts.values())) > 1:
        listing = ", ".join(f"'{name}': {count}" for name, count in counts.items())
        raise DatasetMismatchError(
            f"training dataset arrays have different numbers of samples: {listing}"
        )
    num_samples = next(iter(counts.values()))
    if num_samples == 0:
        raise DatasetMismatchError("the training dataset has zero samples")
    if labels is not None:
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise DatasetMismatchError(
                f"'labels' must be a 1-D integer array of class indices, got shape "
                f"{list(labels.shape)} and dtype {labels.dtype.name}"
            )
        if len(labels) != num_samples:
            raise DatasetMismatchError(
                f"'labels' has {len(labels)} entries but the inputs have {num_samples} samples"
            )
        if labels.min() < 0:
            raise DatasetMismatchError("'labels' holds negative class indices")
        labels = labels.astype(np.int64)
    return TrainingData(inputs=inputs, labels=labels)


def _read(archive: Any, name: str) -> np.ndarray:
    try:
        return np.asarray(archive[name])
    except ValueError as exc:  # object arrays need pickle, which is refused
        raise InvalidDatasetError(f"array '{name}' cannot be read safely: {exc}") from exc


def _fitting_array(array: np.ndarray, name: str, dtype: str, shape: list[Any]) -> np.ndarray:
    want = np.dtype(dtype)
    if array.dtype != want:
        castable = "fiu" if want.kind == "f" else "iu" if want.kind in "iu" else ""
        if array.dtype.kind in castable:
            array = array.astype(want)
        else:
            raise DatasetMismatchError(
                f"training dataset array '{name}' is {array.dtype} but the model input expects "
                f"{dtype}; convert it, e.g. arr.astype(np.{dtype})"
            )
    if array.ndim != len(shape):
        raise DatasetMismatchError(
            f"training dataset array '{name}' has shape {list(array.shape)} but the model input "
            f"has rank {len(shape)} (shape {shape}); the first axis is the sample axis"
        )
    for axis, (dim, got) in enumerate(zip(shape[1:], array.shape[1:], strict=True), 1):
        if isinstance(dim, int) and dim != got:
            raise DatasetMismatchError(
                f"training dataset array '{name}' has size {got} on axis {axis} but the model "
                f"input needs {dim} (model shape {shape}, dataset shape {list(array.shape)})"
            )
    return array


@dataclass
class FitReport:
    metric: str  # "accuracy" (labels) or "agreement" (top-1 agreement with the teacher)
    #: epochs completed in all, counting those of an earlier attempt this one resumed
    epochs_run: int
    #: epoch whose weights the student ends with; 0: training never beat the initial weights
    best_epoch: int
    best_score: float
    #: validation cross-entropy (against labels, or the teacher's top-1) of the kept weights
    best_loss: float
    stopped_early: bool
    resumed_from_epoch: int | None
    history: list[dict[str, float]]  # per epoch: epoch, train_loss, val_score, val_loss
    #: validation score of the student before training
    initial_score: float = math.nan
    #: validation score of the teacher in the same metric (agreement: always 1.0)
    teacher_score: float | None = None
    validation_samples: int = 0
    #: why a checkpoint found at the start was not used, or None
    checkpoint_ignored: str | None = None

    def as_details(self) -> dict[str, Any]:
        details = asdict(self)
        details["initial_score"] = None if math.isnan(self.initial_score) else self.initial_score
        details["best_loss"] = None if math.isinf(self.best_loss) else self.best_loss
        return details


def fit(
    student: torch.nn.Module,
    data: TrainingData,
    settings: TrainingSettings,
    ctx: PassContext,
    *,
    input_names: list[str],
    teacher: torch.nn.Module | None = None,
    after_step: Callable[[torch.nn.Module], None] | None = None,
    stage: str,
    progress_span: tuple[float, float],
    checkpoint_name: str = "training.pt",
) -> FitReport:
    """Train `student` in place on `data` as `settings` say and leave it with its best
    validation weights, on the CPU.

    Loss: with a teacher and labels, alpha * T^2 * KL(teacher || student at temperature T)
    + (1 - alpha) * cross-entropy; a teacher alone: the KL term; labels alone: cross-entropy.
    Inputs are fed positionally in `input_names` order; the first output holds the logits
    [batch, classes]. `after_step(student)` runs after every optimizer step, under no_grad.
    Each epoch is checkpointed as `checkpoint_name` in ctx.checkpoints and a later call
    resumes from it. ctx.progress may raise to cancel; the exception propagates.
    """
    _check_data(data, input_names, has_teacher=teacher is not None)
    device = _device(ctx.device)
    student.to(device)
    if teacher is not None:
        teacher.to(device)
        teacher.eval()
    try:
        run = _prepare_run(student, teacher, data, settings, input_names=input_names, device=device)
        run.after_step = after_step
        teacher_score = _teacher_score(run)
        saved = checkpoints.fingerprint(
            settings, data.num_samples, input_names, teacher is not None
        )
        scratch = ctx.workdir / "checkpoints"
        state, resumed_from, checkpoint_ignored = _start_or_resume(
            run, ctx, checkpoint_name, scratch, saved
        )
        lo, hi = progress_span
        while state.epoch < settings.epochs and not state.stopped_early:
            epoch = state.epoch + 1

            def report(done: float, message: str) -> None:
                ctx.progress(stage, lo + (hi - lo) * done / settings.epochs, message)

            train_loss = _train_epoch(run, epoch, report)
            val_score, val_loss = _validate(
                student, run.inputs, run.val_idx, run.val_targets, device, settings.batch_size
            )
            _end_epoch(state, run, epoch, train_loss, val_score, val_loss)
            checkpoints.save_checkpoint(
                ctx, checkpoint_name, scratch, student, run.optimizer, state, saved
            )
            report(
                epoch,
                f"epoch {epoch}/{settings.epochs}: train loss {train_loss:.4f}, validation "
                f"{run.metric} {val_score:.4f}",
            )
        student.load_state_dict(state.best_state)
    finally:
        student.to("cpu")
        if teacher is not None:
            teacher.to("cpu")
    student.eval()
    return FitReport(
        metric=run.metric,
        epochs_run=state.epoch,
        best_epoch=state.best_epoch,
        best_score=state.best_score,
        best_loss=state.best_loss,
        stopped_early=state.stopped_early,
        resumed_from_epoch=resumed_from,
        history=state.history,
        initial_score=state.initial_score,
        teacher_score=teacher_score,
        validation_samples=len(run.val_idx),
        checkpoint_ignored=checkpoint_ignored,
    )


@dataclass
class _Run:
    """What every step of one training run reads: the models, the data as tensors, the
    split, the optimizer."""

    student: torch.nn.Module
    teacher: torch.nn.Module | None
    settings: TrainingSettings
    device: torch.device
    inputs: list[torch.Tensor]
    labels: torch.Tensor | None
    train_idx: np.ndarray
    val_idx: np.ndarray
    optimizer: torch.optim.Optimizer
    #: "accuracy" against labels, else "agreement" with the teacher.
    metric: str
    #: Whether the loss has the distillation term.
    use_kd: bool
    val_targets: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    after_step: Callable[[torch.nn.Module], None] | None = None


def _check_data(data: TrainingData, input_names: list[str], *, has_teacher: bool) -> None:
    if not has_teacher and data.labels is None:
        raise DatasetMismatchError(
            "training needs 'labels' in the dataset when there is no teacher model to learn from"
        )
    missing = [name for name in input_names if name not in data.inputs]
    if missing:
        raise DatasetMismatchError(f"training data has no array for input(s) {missing}")


def _prepare_run(
    student: torch.nn.Module,
    teacher: torch.nn.Module | None,
    data: TrainingData,
    settings: TrainingSettings,
    *,
    input_names: list[str],
    device: torch.device,
) -> _Run:
    """The data as tensors, the split, and the optimizer, once the student and the teacher
    are known to score the same classes."""
    train_idx, val_idx = split_indices(data.num_samples, settings)
    inputs = [torch.from_numpy(np.ascontiguousarray(data.inputs[n])) for n in input_names]
    labels = torch.from_numpy(data.labels) if data.labels is not None else None
    classes = _check_logits(student, inputs, labels, device, what="the model being trained")
    if teacher is not None:
        teacher_classes = _check_logits(teacher, inputs, None, device, what="the teacher")
        if teacher_classes != classes:
            raise UnsupportedError(
                f"the teacher has {teacher_classes} outputs but the model being trained has "
                f"{classes}; both must score the same classes"
            )
    trainable = [p for p in student.parameters() if p.requires_grad]
    if not trainable:
        raise UnsupportedError("the model has no trainable parameters")
    return _Run(
        student=student,
        teacher=teacher,
        settings=settings,
        device=device,
        inputs=inputs,
        labels=labels,
        train_idx=train_idx,
        val_idx=val_idx,
        optimizer=torch.optim.Adam(trainable, lr=settings.learning_rate),
        metric="accuracy" if labels is not None else "agreement",
        use_kd=teacher is not None and (labels is None or settings.alpha > 0.0),
    )


def _teacher_score(run: _Run) -> float | None:
    """Set the validation targets (the labels, else the teacher's predictions) and return
    the teacher's score on them (None without a teacher)."""
    settings, teacher = run.settings, run.teacher
    if run.labels is not None:
        run.val_targets = run.labels[run.val_idx]
        if teacher is None:
            return None
        return _validate(
            teacher, run.inputs, run.val_idx, run.val_targets, run.device, settings.batch_size
        )[0]
    assert teacher is not None
    run.val_targets = _predict_logits(
        teacher, run.inputs, run.val_idx, run.device, settings.batch_size
    ).argmax(dim=1)
    return 1.0


def _start_or_resume(
    run: _Run, ctx: PassContext, checkpoint_name: str, scratch: Path, saved: dict[str, Any]
) -> tuple[checkpoints.TrainingState, int | None, str | None]:
    """(state, epoch resumed from, why a checkpoint found was not used)."""
    state = checkpoints.TrainingState(best_state=checkpoints.cpu_state(run.student))
    found = ctx.checkpoints.load(checkpoint_name, scratch / f"resume-{checkpoint_name}")
    if found is not None:
        ignored = checkpoints.resume(found, run.student, run.optimizer, state, saved)
        if ignored is None:
            return state, state.epoch, None
    else:
        ignored = None
    state.initial_score, state.best_loss = _validate(
        run.student, run.inputs, run.val_idx, run.val_targets, run.device, run.settings.batch_size
    )
    state.best_score = state.initial_score
    return state, None, ignored


def _train_epoch(run: _Run, epoch: int, report: Callable[[float, str], None]) -> float:
    """One epoch over the training samples; returns the mean training loss."""
    settings, student, teacher = run.settings, run.student, run.teacher
    student.train()
    losses: list[float] = []
    batches = _batches(run.train_idx, settings.batch_size, seed=settings.seed, epoch=epoch)
    report_every = max(1, math.ceil(len(batches) / _PROGRESS_PER_EPOCH))
    with torch.random.fork_rng(devices=_rng_devices(run.device)):
        # Seeded per epoch, so dropout in a resumed epoch draws what it would have.
        torch.manual_seed(settings.seed * 100_003 + epoch)
        for number, batch in enumerate(batches, 1):
            _set_learning_rate(run.optimizer, settings, epoch, number, len(batches))
            feed = [tensor[batch].to(run.device) for tensor in run.inputs]
            target = run.labels[batch].to(run.device) if run.labels is not None else None
            soft = None
            if run.use_kd:
                assert teacher is not None
                with torch.no_grad():
                    soft = _logits(teacher(*feed))
            loss = _loss(_logits(student(*feed)), target, soft, settings)
            run.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            run.optimizer.step()
            if run.after_step is not None:
                with torch.no_grad():
                    run.after_step(student)
            losses.append(float(loss.detach()))
            if number % report_every == 0 and number < len(batches):
                report(
                    epoch - 1 + number / len(batches),
                    f"epoch {epoch}/{settings.epochs}: batch {number}/{len(batches)}",
                )
    return float(np.mean(losses))


def _end_epoch(
    state: checkpoints.TrainingState,
    run: _Run,
    epoch: int,
    train_loss: float,
    val_score: float,
    val_loss: float,
) -> None:
    """Record the epoch, keep the best weights, and stop early after `patience` epochs
    without a better validation score."""
    state.epoch = epoch
    state.history.append(
        {
            "epoch": float(epoch),
            "train_loss": train_loss,
            "val_score": val_score,
            "val_loss": val_loss,
        }
    )
    if _better(val_score, val_loss, state.best_score, state.best_loss):
        state.best_score, state.best_loss = val_score, val_loss
        state.best_epoch, state.stale = epoch, 0
        state.best_state = checkpoints.cpu_state(run.student)
    else:
        state.stale += 1
        patience = run.settings.patience
        if patience is not None and state.stale >= patience:
            state.stopped_early = True


def split_indices(num_samples: int, settings: TrainingSettings) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) sample indices: `validation_split` of the samples, drawn with
    `seed`; with a split of 0, or too few samples to hold any out, validation uses the
    training samples."""
    order = np.random.default_rng(settings.seed).permutation(num_samples)
    held_out = round(num_samples * settings.validation_split)
    if settings.validation_split > 0:
        held_out = max(1, held_out)
    if held_out == 0 or held_out >= num_samples:
        everything = np.sort(order)
        return everything, everything
    return np.sort(order[held_out:]), np.sort(order[:held_out])


def _device(requested: str) -> torch.device:
    if requested == "cuda" and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def _rng_devices(device: torch.device) -> list[int]:
    if device.type == "cuda":
        return [device.index if device.index is not None else torch.cuda.current_device()]
    return []


def _logits(output: Any) -> torch.Tensor:
    """The first output of a model that may return a tensor, a tuple/list or a dict."""
    while not isinstance(output, torch.Tensor):
        if isinstance(output, (tuple, list)) and output:
            output = output[0]
        elif isinstance(output, dict) and output:
            output = next(iter(output.values()))
        else:
            raise UnsupportedError(f"the model returns {type(output).__name__}, not a tensor")
    return output


def _check_logits(
    module: torch.nn.Module,
    inputs: list[torch.Tensor],
    labels: torch.Tensor | None,
    device: torch.device,
    *,
    what: str,
) -> int:
    """The number of classes `module` scores. Refuses models whose first output is not
    [batch, classes] and labels out of range, before any training time is spent."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            out = _logits(module(*[tensor[:2].to(device) for tensor in inputs]))
    finally:
        module.train(was_training)
    if out.ndim != 2 or not out.is_floating_point():
        raise UnsupportedError(
            f"training needs a classifier: the first output of {what} must be float logits "
            f"[batch, classes], got shape {list(out.shape)} ({out.dtype})"
        )
    classes = out.shape[1]
    if labels is not None and int(labels.max()) >= classes:
        raise DatasetMismatchError(
            f"'labels' holds class {int(labels.max())} but the model has {classes} outputs "
            f"(classes 0..{classes - 1})"
        )
    return int(classes)


def _loss(
    logits: torch.Tensor,
    target: torch.Tensor | None,
    soft: torch.Tensor | None,
    settings: TrainingSettings,
) -> torch.Tensor:
    ce = F.cross_entropy(logits, target) if target is not None else None
    if soft is None:
        assert ce is not None
        return ce
    t = settings.temperature
    kd = F.kl_div(
        F.log_softmax(logits / t, dim=1), F.softmax(soft / t, dim=1), reduction="batchmean"
    ) * (t * t)
    if ce is None:
        return kd
    return settings.alpha * kd + (1.0 - settings.alpha) * ce


def _set_learning_rate(
    optimizer: torch.optim.Optimizer,
    settings: TrainingSettings,
    epoch: int,
    step: int,
    steps_per_epoch: int,
) -> None:
    """The rate for `step` (1-based) of `epoch`: a function of the position alone, so a
    resumed run follows the same schedule without saving a scheduler."""
    rate = settings.learning_rate
    if settings.lr_schedule == "cosine":
        done = ((epoch - 1) * steps_per_epoch + step - 1) / (settings.epochs * steps_per_epoch)
        rate *= 0.5 * (1.0 + math.cos(math.pi * done))
    for group in optimizer.param_groups:
        group["lr"] = rate


def _batches(indices: np.ndarray, batch_size: int, *, seed: int, epoch: int) -> list[np.ndarray]:
    """Shuffled batches, drawn from (seed, epoch) so a resumed epoch sees the same ones. A
    last batch of one sample joins the one before (batch norm cannot train on one sample)."""
    order = np.random.default_rng([seed, epoch]).permutation(indices)
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches[-2] = np.concatenate([batches[-2], batches.pop()])
    return batches


def _chunks(indices: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(indices), size):
        yield indices[start : start + size]


def _predict_logits(
    module: torch.nn.Module,
    inputs: list[torch.Tensor],
    indices: np.ndarray,
    device: torch.device,
    batch_size: int,
) -> torch.Tensor:
    """Logits of `module` on the samples `indices`, on the CPU, in float32."""
    was_training = module.training
    module.eval()
    outputs = []
    try:
        with torch.no_grad():
            for chunk in _chunks(indices, max(batch_size, 64)):
                out = _logits(module(*[tensor[chunk].to(device) for tensor in inputs]))
                outputs.append(out.float().cpu())
    finally:
        module.train(was_training)
    return torch.cat(outputs)


#: Share by which the validation loss must fall for an epoch that ties on the score to count.
_LOSS_MIN_IMPROVEMENT = 1e-3


def _better(score: float, loss: float, best_score: float, best_loss: float) -> bool:
    """A higher score wins; on a tie, a clearly lower loss. A small validation split soon
    scores 100% and then ties every epoch, while the loss still tells the epochs apart."""
    if score != best_score:
        return score > best_score
    return loss < best_loss * (1.0 - _LOSS_MIN_IMPROVEMENT)


def _validate(
    module: torch.nn.Module,
    inputs: list[torch.Tensor],
    indices: np.ndarray,
    targets: torch.Tensor,
    device: torch.device,
    batch_size: int,
) -> tuple[float, float]:
    """Top-1 accuracy of `module` on the samples `indices` against `targets`, and its mean
    cross-entropy against them."""
    logits = _predict_logits(module, inputs, indices, device, batch_size)
    accuracy = float((logits.argmax(dim=1) == targets).float().mean())
    return accuracy, float(F.cross_entropy(logits, targets))
