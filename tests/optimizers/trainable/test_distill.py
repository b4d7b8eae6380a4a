"""The distill pass: derived and uploaded students, with and without labels, incompatible
students refused, and a retried job resuming from its checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch

from optimizers.config import DistillConfig
from optimizers.errors import DatasetMismatchError, UnsupportedError
from optimizers.model_info import inspect_model
from optimizers.registry import run_pass
from optimizers.results import DirectoryCheckpoints, PassContext, ProgressFn
from tests.models.onnx_basic import make_cnn, make_dataset
from tests.models.sequences import make_sequence_model
from tests.models.torch_programs import encoder_classifier, export_encoder
from tests.optimizers.helpers import save_npz

IN_FEATURES, CLASSES, SAMPLES = 12, 4, 160
nn = torch.nn


def _mlp(hidden: int, *, out: int = CLASSES, in_features: int = IN_FEATURES, seed: int) -> Any:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(in_features, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, out),
    )


def _export(module: Any, path: Path, *, in_features: int = IN_FEATURES, name: str = "x") -> Path:
    module.eval()
    torch.onnx.export(
        module,
        (torch.randn(2, in_features),),
        str(path),
        input_names=[name],
        output_names=["logits"],
        dynamic_axes={name: {0: "batch"}, "logits": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    return path


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _export(_mlp(32, seed=0), tmp_path_factory.mktemp("distill") / "teacher.onnx")


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory, teacher: Path) -> dict[str, Path]:
    """'labeled': labels are the teacher's own classes (teacher accuracy 1.0); 'unlabeled'."""
    folder = tmp_path_factory.mktemp("distill-data")
    x = np.random.default_rng(1).standard_normal((SAMPLES, IN_FEATURES)).astype(np.float32)
    session = ort.InferenceSession(str(teacher), providers=["CPUExecutionProvider"])
    labels = np.argmax(session.run(None, {"x": x})[0], axis=1).astype(np.int64)
    return {
        "labeled": save_npz(folder / "labeled.npz", x=x, labels=labels),
        "unlabeled": save_npz(folder / "unlabeled.npz", x=x),
    }


def _config(**fields: Any) -> DistillConfig:
    values: dict[str, Any] = {
        "kind": "distill",
        "dataset_id": "labeled",
        "student": {"derive": "width", "ratio": 0.5},
        "epochs": 3,
        "learning_rate": 0.01,
        "batch_size": 16,
        "validation_split": 0.25,
        "patience": None,
        "temperature": 2.0,
    }
    values.update(fields)
    return DistillConfig.model_validate(values)


def _ctx(
    tmp_path: Path,
    datasets: dict[str, Path],
    *,
    models: dict[str, Path] | None = None,
    checkpoints: DirectoryCheckpoints | None = None,
    progress: ProgressFn | None = None,
) -> PassContext:
    ctx = PassContext(workdir=tmp_path, datasets=datasets, models=models or {})
    if checkpoints is not None:
        ctx.checkpoints = checkpoints
    if progress is not None:
        ctx.progress = progress
    return ctx


def _outputs(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["x"]
    assert [o.name for o in session.get_outputs()] == ["logits"]
    return np.asarray(session.run(None, {"x": x})[0])


def test_derived_student_is_smaller_and_learns_the_labels(
    tmp_path: Path, teacher: Path, datasets: dict[str, Path]
) -> None:
    messages: list[tuple[str, float, str]] = []
    ctx = _ctx(tmp_path, datasets, progress=lambda *args: messages.append(args))
    ctx.progress_span = (0.1, 0.5)

    result = run_pass(teacher, _config(), ctx)

    details = result.details
    assert details["student"]["source"] == "derived" and details["student"]["ratio"] == 0.5
    assert details["student_parameters"] < 0.6 * details["teacher_parameters"]
    assert details["metric"] == "accuracy" and details["teacher_score"] == 1.0
    assert details["student_score"] >= 0.6  # chance is 0.25
    assert details["training"]["epochs_run"] == 3
    assert details["training"]["resumed_from_epoch"] is None
    assert inspect_model(result.model_path).parameter_count == details["student_parameters"]
    # The student replaces the teacher: same names, any batch size, it scores the classes.
    data = np.load(datasets["labeled"])
    logits = _outputs(result.model_path, data["x"][:5])
    assert logits.shape == (5, CLASSES)
    assert any("keeps" in note and "teacher's accuracy" in note for note in result.notes)
    assert all(0.1 <= fraction <= 0.5 for _, fraction, _ in messages)
    assert {stage for stage, _, _ in messages} == {"distilling"}


def test_uploaded_student_learns_from_the_teacher_without_labels(
    tmp_path: Path, teacher: Path, datasets: dict[str, Path]
) -> None:
    student = _export(_mlp(8, seed=5), tmp_path / "small.onnx")
    ctx = _ctx(tmp_path / "work", datasets, models={"small": student})

    result = run_pass(teacher, _config(dataset_id="unlabeled", student={"model_id": "small"}), ctx)

    details = result.details
    assert details["student"] == {"source": "model_id", "model_id": "small"}
    assert details["metric"] == "agreement" and details["teacher_score"] == 1.0
    assert details["student_parameters"] == inspect_model(student).parameter_count
    assert details["student_score"] > details["training"]["initial_score"] + 0.1
    # The exported student agrees with the teacher about as often as the report says.
    data = np.load(datasets["unlabeled"])["x"]
    agreement = np.mean(
        _outputs(result.model_path, data).argmax(1) == _outputs(teacher, data).argmax(1)
    )
    assert agreement >= details["student_score"] - 0.15
    assert any("agrees with the teacher" in note for note in result.notes)


@pytest.mark.parametrize(
    ("build", "error", "message"),
    [
        (lambda: (_mlp(8, seed=1), {"name": "input"}), DatasetMismatchError, "same inputs"),
        (
            lambda: (_mlp(8, seed=1, in_features=6), {"in_features": 6}),
            DatasetMismatchError,
            "batch axis only",
        ),
        (lambda: (_mlp(8, seed=1, out=3), {}), DatasetMismatchError, "first output"),
    ],
    ids=["input-name", "input-size", "output-width"],
)
def test_incompatible_student_is_refused_clearly(
    tmp_path: Path,
    teacher: Path,
    datasets: dict[str, Path],
    build: Any,
    error: type[Exception],
    message: str,
) -> None:
    module, export_args = build()
    student = _export(module, tmp_path / "bad.onnx", **export_args)
    ctx = _ctx(tmp_path / "work", datasets, models={"bad": student})
    with pytest.raises(error, match=message):
        run_pass(teacher, _config(student={"model_id": "bad"}), ctx)


def test_missing_student_and_a_student_with_other_outputs_are_refused(
    tmp_path: Path, teacher: Path, datasets: dict[str, Path]
) -> None:
    with pytest.raises(DatasetMismatchError, match="'gone' was not found"):
        run_pass(teacher, _config(student={"model_id": "gone"}), _ctx(tmp_path, datasets))

    class TwoOutputs(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = _mlp(8, seed=2)

        def forward(self, x: Any) -> Any:
            logits = self.body(x)
            return logits, logits.softmax(1)

    path = tmp_path / "two.onnx"
    torch.onnx.export(
        TwoOutputs().eval(),
        (torch.randn(2, IN_FEATURES),),
        str(path),
        input_names=["x"],
        output_names=["logits", "probs"],
        dynamic_axes={"x": {0: "b"}, "logits": {0: "b"}, "probs": {0: "b"}},
        opset_version=17,
        dynamo=False,
    )
    with pytest.raises(UnsupportedError, match="2 output"):
        run_pass(
            teacher,
            _config(student={"model_id": "two"}),
            _ctx(tmp_path, datasets, models={"two": path}),
        )


def test_a_retried_job_resumes_from_the_checkpoint(
    tmp_path: Path, teacher: Path, datasets: dict[str, Path]
) -> None:
    store = DirectoryCheckpoints(tmp_path / "checkpoints")

    def killed_after_epoch_1(stage: str, fraction: float, message: str) -> None:
        if message.startswith("epoch 1/") and "validation" in message:
            raise KeyboardInterrupt("worker killed")

    config = _config(dataset_id="unlabeled")
    with pytest.raises(KeyboardInterrupt):
        run_pass(
            teacher,
            config,
            _ctx(tmp_path / "first", datasets, checkpoints=store, progress=killed_after_epoch_1),
        )

    seen: list[str] = []
    result = run_pass(
        teacher,
        config,
        _ctx(
            tmp_path / "second",
            datasets,
            checkpoints=store,
            progress=lambda stage, fraction, message: seen.append(message),
        ),
    )

    training = result.details["training"]
    assert training["resumed_from_epoch"] == 1
    assert training["checkpoint_ignored"] is None
    assert training["epochs_run"] == 3 and len(training["history"]) == 3
    assert not any(message.startswith("epoch 1/") for message in seen)
    assert "resumed from the checkpoint of epoch 1" in result.notes


def test_derived_student_of_a_cnn_keeps_its_interface(tmp_path: Path) -> None:
    cnn = make_cnn(tmp_path / "cnn.onnx", size=8, width=8)
    data = make_dataset(tmp_path / "cnn.npz", cnn, samples=48, labels=False)
    config = _config(dataset_id="images", epochs=1, validation_split=0.0)

    result = run_pass(cnn, config, _ctx(tmp_path / "work", {"images": data}))

    assert result.details["student_parameters"] < result.details["teacher_parameters"]
    info = inspect_model(result.model_path)
    assert [t.name for t in info.inputs] == ["image"] and info.outputs[0].shape[1] == 4
    session = ort.InferenceSession(str(result.model_path), providers=["CPUExecutionProvider"])
    images = np.load(data)["image"][:3]
    assert session.run(None, {"image": images})[0].shape == (3, 4)


def test_symbolic_input_sizes_are_refused_before_training(tmp_path: Path) -> None:
    model = make_sequence_model(tmp_path / "seq.onnx")
    data = save_npz(tmp_path / "seq.npz", x=np.zeros((4, 3, 8), np.float32))
    with pytest.raises(UnsupportedError, match="fixed input sizes"):
        run_pass(model, _config(dataset_id="seq"), _ctx(tmp_path / "work", {"seq": data}))


def test_derived_student_of_a_transformer_has_half_the_heads(tmp_path: Path) -> None:
    encoder = encoder_classifier(heads=4, layers=2, classes=CLASSES)
    teacher = export_encoder(encoder, tmp_path / "encoder.onnx")
    x = np.random.default_rng(0).standard_normal((32, 5, 16)).astype(np.float32)
    data = save_npz(tmp_path / "tokens.npz", x=x)
    config = _config(dataset_id="tokens", epochs=1, validation_split=0.0)

    result = run_pass(teacher, config, _ctx(tmp_path / "work", {"tokens": data}))

    heads = result.details["student"]["attention_heads"]
    assert [change["after"] for change in heads.values()] == [2, 2]
    assert result.details["student_parameters"] < 0.6 * result.details["teacher_parameters"]
    assert _outputs(result.model_path, x[:3]).shape == (3, CLASSES)
