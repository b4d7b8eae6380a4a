"""The shared training loop: losses, validation, early stopping, checkpoints and resume."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from optimizers.config import TrainingSettings
from optimizers.errors import DatasetMismatchError, UnsupportedError
from optimizers.results import (
    Checkpoints,
    DirectoryCheckpoints,
    ModelInfo,
    PassContext,
    ProgressFn,
    TensorInfo,
)
from optimizers.trainable.training import (
    FitReport,
    TrainingData,
    fit,
    load_training_data,
    split_indices,
)
from tests.optimizers.helpers import save_npz

FEATURES, CLASSES = 8, 4


def _mlp(seed: int, hidden: int = 16) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(FEATURES, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, CLASSES)
    )


def _task(samples: int = 160, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and the classes a fixed linear map gives them: learnable in a few epochs."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((samples, FEATURES)).astype(np.float32)
    w = rng.standard_normal((FEATURES, CLASSES))
    return x, np.argmax(x @ w, axis=1).astype(np.int64)


def _settings(**overrides: object) -> TrainingSettings:
    values: dict[str, object] = {
        "dataset_id": "d",
        "epochs": 3,
        "learning_rate": 0.02,
        "batch_size": 16,
        "validation_split": 0.25,
        "patience": None,
    }
    values.update(overrides)
    return TrainingSettings.model_validate(values)


def _ctx(
    tmp_path: Path, *, checkpoints: Checkpoints | None = None, progress: ProgressFn | None = None
) -> PassContext:
    ctx = PassContext(workdir=tmp_path / "work", datasets={})
    if checkpoints is not None:
        ctx.checkpoints = checkpoints
    if progress is not None:
        ctx.progress = progress
    return ctx


def _info(*inputs: tuple[str, list[int | str]]) -> ModelInfo:
    return ModelInfo(
        format="onnx",
        opset=17,
        ir_version=8,
        producer=None,
        inputs=[TensorInfo(name=n, dtype="float32", shape=s) for n, s in inputs],
        outputs=[TensorInfo(name="logits", dtype="float32", shape=["N", CLASSES])],
        parameter_count=0,
        size_bytes=0,
    )


def test_cross_entropy_training_lifts_accuracy(tmp_path: Path) -> None:
    x, y = _task()
    student = _mlp(seed=1)
    messages: list[tuple[str, float, str]] = []
    ctx = _ctx(tmp_path, progress=lambda *args: messages.append(args))

    report = fit(
        student,
        TrainingData(inputs={"x": x}, labels=y),
        _settings(),
        ctx,
        input_names=["x"],
        stage="finetuning",
        progress_span=(0.2, 0.6),
    )

    assert report.metric == "accuracy"
    assert report.epochs_run == 3 and len(report.history) == 3
    assert report.best_score > report.initial_score + 0.2
    assert report.best_score >= 0.6
    assert report.resumed_from_epoch is None and not report.stopped_early
    assert report.validation_samples == 40
    # The student ends with its best weights, on the CPU, in eval mode.
    _, val = split_indices(len(x), _settings())
    with torch.no_grad():
        predicted = student(torch.from_numpy(x[val])).argmax(dim=1).numpy()
    assert float(np.mean(predicted == y[val])) == pytest.approx(report.best_score)
    assert not student.training
    # Progress stays inside the span, rises, and names the epoch and the metric.
    fractions = [fraction for _, fraction, _ in messages]
    assert all(0.2 <= f <= 0.6 for f in fractions) and fractions == sorted(fractions)
    assert messages[-1][1] == pytest.approx(0.6)
    assert messages[-1][2].startswith("epoch 3/3: train loss ")
    assert "validation accuracy" in messages[-1][2]
    assert {stage for stage, _, _ in messages} == {"finetuning"}
    details = report.as_details()
    assert details["best_epoch"] == report.best_epoch and len(details["history"]) == 3


def test_epochs_that_tie_on_accuracy_are_told_apart_by_the_validation_loss(
    tmp_path: Path,
) -> None:
    x, y = _task(samples=160)
    report = fit(
        _mlp(seed=1, hidden=32),
        TrainingData(inputs={"x": x}, labels=y),
        _settings(epochs=12, learning_rate=0.05, lr_schedule="constant", validation_split=0.1),
        _ctx(tmp_path),
        input_names=["x"],
        stage="finetuning",
        progress_span=(0.0, 1.0),
    )

    top = max(entry["val_score"] for entry in report.history)
    tied = [entry for entry in report.history if entry["val_score"] == top]
    assert len(tied) >= 2  # the case in question: several epochs share the best score
    kept = report.history[report.best_epoch - 1]
    assert kept["val_score"] == top and report.best_score == top
    assert kept["val_loss"] == pytest.approx(min(entry["val_loss"] for entry in tied), rel=1e-3)
    assert report.best_loss == kept["val_loss"]


def test_distillation_without_labels_raises_agreement(tmp_path: Path) -> None:
    x, _ = _task(samples=192)
    teacher = _mlp(seed=7, hidden=32)
    student = _mlp(seed=3, hidden=8)
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}

    report = fit(
        student,
        TrainingData(inputs={"x": x}, labels=None),
        _settings(epochs=3, temperature=2.0),
        _ctx(tmp_path),
        input_names=["x"],
        teacher=teacher,
        stage="distilling",
        progress_span=(0.0, 1.0),
    )

    assert report.metric == "agreement"
    assert report.teacher_score == 1.0
    assert report.best_score > report.initial_score + 0.15
    assert report.best_score >= 0.6
    # The teacher is only read.
    for name, value in teacher.state_dict().items():
        assert torch.equal(value, teacher_before[name])


def test_after_step_runs_after_every_optimizer_step(tmp_path: Path) -> None:
    x, y = _task(samples=64)
    student = _mlp(seed=1)
    mask = torch.ones_like(student[0].weight)
    mask[:, :4] = 0.0
    calls: list[int] = []

    def reapply(module: torch.nn.Module) -> None:
        calls.append(1)
        module[0].weight.mul_(mask)

    fit(
        student,
        TrainingData(inputs={"x": x}, labels=y),
        _settings(epochs=2, batch_size=16, validation_split=0.0),
        _ctx(tmp_path),
        input_names=["x"],
        after_step=reapply,
        stage="finetuning",
        progress_span=(0.0, 1.0),
    )

    assert len(calls) == 2 * 4  # 64 samples, batches of 16, two epochs
    assert torch.count_nonzero(student[0].weight[:, :4]) == 0


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_learning_rate_follows_the_schedule(tmp_path: Path, schedule: str) -> None:
    x, y = _task(samples=64)
    rates: list[float] = []

    def record(optimizer: torch.optim.Optimizer, *_: object) -> None:
        rates.append(optimizer.param_groups[0]["lr"])

    hook = register_optimizer_step_pre_hook(record)
    try:
        fit(
            _mlp(seed=1),
            TrainingData(inputs={"x": x}, labels=y),
            _settings(epochs=2, learning_rate=0.02, lr_schedule=schedule, validation_split=0.0),
            _ctx(tmp_path),
            input_names=["x"],
            stage="finetuning",
            progress_span=(0.0, 1.0),
        )
    finally:
        hook.remove()

    assert len(rates) == 2 * 4 and rates[0] == pytest.approx(0.02)
    if schedule == "constant":
        assert rates == [pytest.approx(0.02)] * 8
    else:  # a half cosine over all steps: falling every step, nearly zero at the last
        assert all(later < earlier for earlier, later in itertools.pairwise(rates))
        assert rates[4] == pytest.approx(0.01)  # half way: half the rate
        assert rates[-1] < 0.001


def test_early_stopping_stops_when_nothing_improves(tmp_path: Path) -> None:
    x, y = _task(samples=64)
    report = fit(
        _mlp(seed=1),
        TrainingData(inputs={"x": x}, labels=y),
        _settings(epochs=10, learning_rate=1e-9, patience=2),
        _ctx(tmp_path),
        input_names=["x"],
        stage="finetuning",
        progress_span=(0.0, 1.0),
    )

    assert report.stopped_early
    assert report.epochs_run == 2
    assert report.best_epoch == 0  # the initial weights were never beaten, so they are kept


class _TwoInputs(torch.nn.Module):
    """forward(a, b) -> (logits, features): several inputs and outputs."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = torch.nn.Linear(4, 16)
        self.b = torch.nn.Linear(4, 16)
        self.head = torch.nn.Linear(16, CLASSES)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = torch.relu(self.a(a) - self.b(b))
        return self.head(features), features


def test_several_inputs_fed_in_order_and_first_output_is_the_logits(tmp_path: Path) -> None:
    x, y = _task(samples=128)
    # a - b is what the label depends on; b is fed second as input_names say.
    data = TrainingData(inputs={"b": np.zeros_like(x[:, 4:]), "a": x[:, :4]}, labels=y)
    report = fit(
        _TwoInputs(),
        data,
        _settings(epochs=3),
        _ctx(tmp_path),
        input_names=["a", "b"],
        stage="finetuning",
        progress_span=(0.0, 1.0),
    )
    assert report.epochs_run == 3
    assert report.best_score > report.initial_score


def test_resume_continues_from_the_last_checkpoint(tmp_path: Path) -> None:
    x, y = _task(samples=96)
    data = TrainingData(inputs={"x": x}, labels=y)
    settings = _settings(epochs=3)

    def run(ctx: PassContext) -> tuple[FitReport, torch.nn.Module]:
        student = _mlp(seed=1)
        report = fit(
            student,
            data,
            settings,
            ctx,
            input_names=["x"],
            stage="finetuning",
            progress_span=(0.0, 1.0),
        )
        return report, student

    straight, straight_student = run(_ctx(tmp_path / "straight"))

    def killed_after_epoch_1(stage: str, fraction: float, message: str) -> None:
        if message.startswith("epoch 1/") and "validation" in message:
            raise KeyboardInterrupt("worker killed")

    store = DirectoryCheckpoints(tmp_path / "store")
    with pytest.raises(KeyboardInterrupt):
        run(_ctx(tmp_path / "first", checkpoints=store, progress=killed_after_epoch_1))
    assert (tmp_path / "store" / "training.pt").is_file()

    seen: list[str] = []
    resumed, resumed_student = run(
        _ctx(tmp_path / "second", checkpoints=store, progress=lambda s, f, m: seen.append(m))
    )

    assert resumed.resumed_from_epoch == 1
    assert {m.split(":")[0] for m in seen} == {"epoch 2/3", "epoch 3/3"}
    assert resumed.epochs_run == 3
    for got, want in zip(resumed.history, straight.history, strict=True):
        assert got == pytest.approx(want)
    assert resumed.best_epoch == straight.best_epoch
    for name, value in straight_student.state_dict().items():
        torch.testing.assert_close(resumed_student.state_dict()[name], value)


def test_a_checkpoint_of_another_model_is_ignored_with_the_reason(tmp_path: Path) -> None:
    x, y = _task(samples=64)
    data = TrainingData(inputs={"x": x}, labels=y)
    store = DirectoryCheckpoints(tmp_path / "store")
    settings = _settings(epochs=1)
    for hidden in (16, 8):
        report = fit(
            _mlp(1, hidden=hidden),
            data,
            settings,
            _ctx(tmp_path, checkpoints=store),
            input_names=["x"],
            stage="s",
            progress_span=(0.0, 1.0),
        )

    assert report.resumed_from_epoch is None
    assert report.checkpoint_ignored is not None
    assert "does not match the model" in report.checkpoint_ignored
    assert report.epochs_run == 1


def test_training_without_teacher_or_labels_is_refused(tmp_path: Path) -> None:
    x, _ = _task(samples=16)
    with pytest.raises(DatasetMismatchError, match="needs 'labels'"):
        fit(
            _mlp(1),
            TrainingData(inputs={"x": x}, labels=None),
            _settings(),
            _ctx(tmp_path),
            input_names=["x"],
            stage="s",
            progress_span=(0.0, 1.0),
        )


def test_labels_beyond_the_outputs_and_non_classifiers_are_refused(tmp_path: Path) -> None:
    x, y = _task(samples=16)
    y_bad = y.copy()
    y_bad[0] = 9
    cases = [
        (_mlp(1), y_bad, DatasetMismatchError, "holds class 9"),
        (torch.nn.Flatten(0), y, UnsupportedError, "classifier"),
    ]
    for module, labels, error, message in cases:
        with pytest.raises(error, match=message):
            fit(
                module,
                TrainingData({"x": x}, labels),
                _settings(),
                _ctx(tmp_path),
                input_names=["x"],
                stage="s",
                progress_span=(0.0, 1.0),
            )


def test_load_training_data_casts_floats_and_checks_arrays(tmp_path: Path) -> None:
    x, y = _task(samples=12)
    info = _info(("x", ["N", FEATURES]))
    data = load_training_data(save_npz(tmp_path / "ok.npz", x=x.astype(np.float64), labels=y), info)
    assert data.inputs["x"].dtype == np.float32 and data.labels is not None
    assert data.labels.dtype == np.int64 and data.num_samples == 12

    unlabeled = load_training_data(save_npz(tmp_path / "nolabels.npz", x=x), info)
    assert unlabeled.labels is None

    with pytest.raises(DatasetMismatchError, match="no array for model input 'x'"):
        load_training_data(save_npz(tmp_path / "missing.npz", image=x), info)
    with pytest.raises(DatasetMismatchError, match="size 4 on axis 1"):
        load_training_data(save_npz(tmp_path / "narrow.npz", x=x[:, :4]), info)
    with pytest.raises(DatasetMismatchError, match="1-D integer"):
        load_training_data(
            save_npz(tmp_path / "floaty.npz", x=x, labels=y.astype(np.float32)), info
        )
    with pytest.raises(DatasetMismatchError, match="11 entries"):
        load_training_data(save_npz(tmp_path / "short.npz", x=x, labels=y[:11]), info)
