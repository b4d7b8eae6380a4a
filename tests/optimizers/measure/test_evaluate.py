from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from optimizers.config import EvaluateConfig
from optimizers.errors import EvaluationError
from optimizers.measure.evaluate import (
    SQNR_CAP_DB,
    FidelityAccumulator,
    evaluate,
    fidelity_on_inputs,
)
from optimizers.registry import run_pass
from optimizers.results import PassContext
from tests.models.onnx_basic import make_cnn, make_dataset
from tests.models.sequences import make_sequence_model
from tests.optimizers.helpers import quantize_config, save_npz

CPU = ["CPUExecutionProvider"]


@pytest.fixture(scope="module")
def quantized_mlp(tmp_path_factory: pytest.TempPathFactory, mlp: Path) -> Path:
    workdir = tmp_path_factory.mktemp("quantized")
    config = quantize_config(method="dynamic")
    return run_pass(mlp, config, PassContext(workdir=workdir, datasets={})).model_path


def test_identical_models_agree_perfectly(mlp: Path, mlp_data: Path) -> None:
    events: list[tuple[str, float, str]] = []
    result = evaluate(
        mlp,
        mlp,
        mlp_data,
        EvaluateConfig(dataset_id="d", batch_size=10),
        providers=CPU,
        threads=1,
        progress=lambda *event: events.append(event),
        progress_span=(0.45, 0.6),
    )
    assert result["baseline_accuracy"] == 1.0  # the factory labels with the model itself
    assert result["optimized_accuracy"] == 1.0
    fidelity = result["fidelity"]
    assert fidelity["cosine_mean"] == pytest.approx(1.0)
    assert fidelity["cosine_min"] == pytest.approx(1.0)
    assert fidelity["max_abs_error"] == 0.0
    assert fidelity["sqnr_db"] == SQNR_CAP_DB
    assert fidelity["top1_agreement"] == 1.0
    assert fidelity["samples"] == 48
    assert fidelity["source"] == "dataset"
    json.dumps(result, allow_nan=False)
    assert [message for _, _, message in events][-1] == "48/48 samples"
    assert events[-1][1] == pytest.approx(0.6)


def test_quantized_model_numbers(mlp: Path, mlp_data: Path, quantized_mlp: Path) -> None:
    result = evaluate(
        mlp,
        quantized_mlp,
        mlp_data,
        EvaluateConfig(dataset_id="d", samples=20),
        providers=CPU,
        threads=1,
    )
    fidelity = result["fidelity"]
    assert fidelity["samples"] == 20
    assert 0.98 < fidelity["cosine_min"] <= fidelity["cosine_mean"] < 1.0
    assert 0.0 < fidelity["max_abs_error"] < 1.0
    assert 15.0 < fidelity["sqnr_db"] < SQNR_CAP_DB
    assert 0.0 <= result["optimized_accuracy"] <= 1.0
    assert result["optimized_accuracy"] == fidelity["top1_agreement"]  # labels are baseline top-1


def test_fixed_batch_models_are_padded(tmp_path: Path) -> None:
    model = make_cnn(tmp_path / "cnn.onnx", batch=4, size=8)
    twin = make_cnn(tmp_path / "twin.onnx", size=8)
    data = make_dataset(tmp_path / "d.npz", twin, samples=10)
    result = evaluate(model, model, data, EvaluateConfig(dataset_id="d"), providers=CPU, threads=1)
    assert result["fidelity"]["samples"] == 10
    assert result["baseline_accuracy"] == 1.0


def test_accuracy_needs_a_classifier_output(tmp_path: Path) -> None:
    model = make_sequence_model(tmp_path / "seq.onnx", reduce=False)
    data = save_npz(
        tmp_path / "d.npz", x=np.ones((4, 3, 8), np.float32), labels=np.zeros(4, np.int64)
    )
    # Without an explicit metric a non-classifier just has no accuracy.
    default = evaluate(model, model, data, EvaluateConfig(dataset_id="d"), providers=CPU, threads=1)
    assert default["baseline_accuracy"] is None
    assert default["fidelity"]["top1_agreement"] is None
    with pytest.raises(EvaluationError, match=r"shape \[batch, classes\]"):
        evaluate(
            model,
            model,
            data,
            EvaluateConfig(dataset_id="d", metric="accuracy"),
            providers=CPU,
            threads=1,
        )


def test_fidelity_on_inputs(mlp: Path, quantized_mlp: Path) -> None:
    rng = np.random.default_rng(0)
    feeds = [{"x": rng.standard_normal((4, 16)).astype(np.float32)} for _ in range(3)]
    fidelity = fidelity_on_inputs(mlp, quantized_mlp, feeds, providers=CPU, threads=1)
    assert fidelity["samples"] == 12
    assert fidelity["source"] == "synthetic_inputs"
    assert fidelity["cosine_mean"] > 0.98


def test_accumulator_edge_cases() -> None:
    zeros = FidelityAccumulator()
    zeros.add(np.zeros((2, 3)), np.zeros((2, 3)))
    assert zeros.result(source="x")["cosine_mean"] == 1.0
    one_zero = FidelityAccumulator()
    one_zero.add(np.zeros((1, 3)), np.ones((1, 3)))
    result = one_zero.result(source="x")
    assert result["cosine_mean"] == 0.0
    assert result["sqnr_db"] == -SQNR_CAP_DB
    json.dumps(result, allow_nan=False)
    regression = FidelityAccumulator()
    regression.add(np.ones((2, 1)), np.ones((2, 1)))
    assert regression.result(source="x")["top1_agreement"] is None
    with pytest.raises(EvaluationError, match="shape"):
        FidelityAccumulator().add(np.ones((2, 3)), np.ones((2, 4)))
