from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from optimizers.errors import QuantizationError
from optimizers.registry import run_pass
from optimizers.results import PassContext
from tests.models.onnx_basic import make_cnn, make_dataset, make_mlp
from tests.optimizers.helpers import cosine, quantize_config

Progress = list[tuple[str, float, str]]


def _context(tmp_path: Path, datasets: dict[str, Path], events: Progress) -> PassContext:
    return PassContext(
        workdir=tmp_path / "work",
        datasets=datasets,
        progress=lambda stage, fraction, message: events.append((stage, fraction, message)),
        progress_span=(0.2, 0.4),
    )


def _outputs(model: Path, data: Path, name: str) -> np.ndarray:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    feeds = {name: np.load(data)[name][:16]}
    return np.asarray(session.run(None, feeds)[0])


def _assert_close_and_loadable(original: Path, quantized: Path, data: Path, name: str) -> None:
    assert cosine(_outputs(original, data, name), _outputs(quantized, data, name)) > 0.98


@pytest.mark.parametrize("per_channel", [False, True])
def test_dynamic_quantization(tmp_path: Path, mlp: Path, mlp_data: Path, per_channel: bool) -> None:
    events: Progress = []
    config = quantize_config(method="dynamic", per_channel=per_channel)
    result = run_pass(mlp, config, _context(tmp_path, {}, events))

    assert result.model_path.parent == tmp_path / "work"
    assert result.model_path.stat().st_size < mlp.stat().st_size / 2
    _assert_close_and_loadable(mlp, result.model_path, mlp_data, "x")
    assert result.details["method"] == "dynamic"
    assert result.details["per_channel"] is per_channel
    assert result.details["quantized_nodes"] > 0
    assert result.details["pre_processed"] == "full"
    assert {stage for stage, _, _ in events} == {"quantizing"}
    assert all(0.2 <= fraction <= 0.4 for _, fraction, _ in events)


@pytest.mark.parametrize(
    ("fmt", "method", "per_channel"),
    [
        ("qdq", "minmax", False),
        ("qoperator", "minmax", True),
        ("qdq", "entropy", True),
        ("qoperator", "percentile", False),
    ],
)
def test_static_quantization(
    tmp_path: Path, mlp: Path, mlp_data: Path, fmt: str, method: str, per_channel: bool
) -> None:
    events: Progress = []
    config = quantize_config(
        {
            "method": "static",
            "format": fmt,
            "per_channel": per_channel,
            "calibration": {"dataset_id": "cal", "samples": 20, "method": method},
        }
    )
    result = run_pass(mlp, config, _context(tmp_path, {"cal": mlp_data}, events))

    assert result.model_path.stat().st_size < mlp.stat().st_size / 2
    _assert_close_and_loadable(mlp, result.model_path, mlp_data, "x")
    assert result.details["format"] == fmt
    assert result.details["quantized_nodes"] > 0
    stages = [stage for stage, _, _ in events]
    assert "calibrating" in stages and stages[-1] == "quantizing"
    calibrated = [message for stage, _, message in events if stage == "calibrating"]
    assert calibrated == [f"calibrated {n}/20" for n in (5, 10, 15, 20)]
    fractions = [fraction for _, fraction, _ in events]
    assert fractions == sorted(fractions) and all(0.2 <= f <= 0.4 for f in fractions)


def test_static_quantization_of_a_fixed_batch_cnn(tmp_path: Path) -> None:
    # Batch fixed at 4 and 10 calibration samples: the last batch must be filled up.
    model = make_cnn(tmp_path / "cnn.onnx", batch=4, width=16)
    # Same weights with a free batch axis, so the factory can label all 10 samples at once.
    twin = make_cnn(tmp_path / "twin.onnx", batch="N", width=16)
    data = make_dataset(tmp_path / "cnn.npz", twin, samples=10)
    config = quantize_config(
        {"method": "static", "per_channel": True, "calibration": {"dataset_id": "c"}}
    )
    result = run_pass(model, config, _context(tmp_path, {"c": data}, []))
    session = ort.InferenceSession(str(result.model_path), providers=["CPUExecutionProvider"])
    feeds = {"image": np.load(data)["image"][:4]}
    baseline = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    assert cosine(baseline.run(None, feeds)[0], session.run(None, feeds)[0]) > 0.98
    assert any("fewer than the 128 requested" in note for note in result.notes)


@pytest.mark.parametrize("method", ["dynamic", "static"])
def test_per_channel_upgrades_opset_12_models(tmp_path: Path, mlp_data: Path, method: str) -> None:
    model = make_mlp(tmp_path / "old.onnx", hidden=256, opset=12)
    config = quantize_config(
        {"method": method, "per_channel": True}
        | ({"calibration": {"dataset_id": "c", "samples": 16}} if method == "static" else {})
    )
    result = run_pass(model, config, _context(tmp_path, {"c": mlp_data}, []))

    assert result.details["opset_upgraded_from"] == 12
    assert "upgraded the model from opset 12 to 13 for per-channel quantization" in result.notes
    assert onnx.load(str(result.model_path)).opset_import[0].version >= 13
    _assert_close_and_loadable(model, result.model_path, mlp_data, "x")


def test_pre_processing_works_with_relative_paths(
    tmp_path: Path, mlp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A worker started in the project folder with the default data folder ("./data") hands
    # passes relative paths; pre-processing runs in a scratch directory of its own.
    shutil.copy(mlp, tmp_path / "model.onnx")
    monkeypatch.chdir(tmp_path)
    ctx = PassContext(workdir=Path("work"), datasets={})

    result = run_pass(Path("model.onnx"), quantize_config(method="dynamic"), ctx)

    assert result.details["pre_processed"] == "full"
    assert not any("pre-processing" in note for note in result.notes)
    assert (tmp_path / result.model_path).stat().st_size < mlp.stat().st_size / 2


def test_failed_pre_processing_is_a_note(
    tmp_path: Path, mlp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("symbolic shape inference exploded")

    monkeypatch.setattr("optimizers.quantization.integer.quant_pre_process", broken)
    result = run_pass(mlp, quantize_config(method="dynamic"), _context(tmp_path, {}, []))
    assert result.details["pre_processed"] == "skipped"
    assert any("exploded" in note for note in result.notes)
    assert result.model_path.stat().st_size < mlp.stat().st_size


def test_unsupported_type_combination_is_rejected(tmp_path: Path, mlp: Path) -> None:
    config = quantize_config(
        {
            "method": "static",
            "activation_type": "int8",
            "weight_type": "uint8",
            "calibration": {"dataset_id": "c"},
        }
    )
    with pytest.raises(QuantizationError, match="int8 activations with uint8 weights"):
        run_pass(mlp, config, _context(tmp_path, {"c": tmp_path / "unused.npz"}, []))


def test_onnxruntime_failures_become_quantization_errors(
    tmp_path: Path, mlp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> None:
        raise ValueError("unsupported operator Foo")

    monkeypatch.setattr("optimizers.quantization.integer.quantize_dynamic", broken)
    with pytest.raises(QuantizationError, match="could not quantize the model: unsupported") as exc:
        run_pass(mlp, quantize_config(method="dynamic"), _context(tmp_path, {}, []))
    assert exc.value.type == "quantization_failed"


class Cancelled(Exception):
    pass


def test_exceptions_from_progress_pass_through(tmp_path: Path, mlp: Path, mlp_data: Path) -> None:
    def cancel(stage: str, fraction: float, message: str) -> None:
        if stage == "calibrating":
            raise Cancelled

    config = quantize_config({"method": "static", "calibration": {"dataset_id": "c"}})
    ctx = PassContext(workdir=tmp_path, datasets={"c": mlp_data}, progress=cancel)
    with pytest.raises(Cancelled):
        run_pass(mlp, config, ctx)
