from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from optimizers.config import PipelineSpec
from optimizers.errors import OptimizerError
from optimizers.external_data import model_size_bytes as model_size
from optimizers.measure.verdict import verdict_text as _verdict
from optimizers.model_info import inspect_model
from optimizers.pipeline import ArtifactFiles, run_pipeline
from tests.models.sensitive import SENSITIVE_NODE, make_inputs, make_outlier_mlp
from tests.models.sequences import make_sequence_model
from tests.optimizers.helpers import partial_quantize

SIDE = {"size_bytes", "latency_ms", "throughput_per_s", "peak_memory_bytes", "accuracy"}
FIDELITY = {
    "cosine_mean",
    "cosine_min",
    "max_abs_error",
    "sqnr_db",
    "top1_agreement",
    "samples",
    "source",
}
COMPARISON = {
    "size_ratio",
    "speedup_p50",
    "speedup_interval",
    "accuracy_drop",
    "metric",
    "drop",
    "max_drop",
    "slower_than_baseline",
    "within_tolerance",
    "verdict",
}
FAST_BENCHMARK = {"batch_sizes": [1, 4], "warmup": 2, "iterations": 5, "threads": 1}


def test_static_quantization_end_to_end(tmp_path: Path, mlp: Path, mlp_data: Path) -> None:
    spec = PipelineSpec.model_validate(
        {
            "passes": [
                {
                    "kind": "quantize",
                    "method": "static",
                    "calibration": {"dataset_id": "data", "samples": 16},
                }
            ],
            "evaluate": {"dataset_id": "data", "max_drop": 0.05, "samples": 32},
            "benchmark": FAST_BENCHMARK,
        }
    )
    events: list[tuple[str, float, str]] = []
    result = run_pipeline(
        model_path=mlp,
        spec=spec,
        datasets={"data": mlp_data},
        workdir=tmp_path,
        progress=lambda *event: events.append(event),
    )

    metrics = result.metrics
    json.dumps(metrics, allow_nan=False)
    assert result.model_path.is_file() and result.model_path.parent.parent == tmp_path
    for name in ("baseline", "optimized"):
        assert set(metrics[name]) == SIDE
        assert set(metrics[name]["latency_ms"]) == {"1", "4"}
        assert set(metrics[name]["latency_ms"]["1"]) == {"p50", "p90", "p95", "p99", "mean"}
        assert metrics[name]["accuracy"] is not None
    assert metrics["baseline"]["accuracy"] == 1.0
    assert set(metrics["fidelity"]) == FIDELITY
    assert metrics["fidelity"]["source"] == "dataset" and metrics["fidelity"]["samples"] == 32
    comparison = metrics["comparison"]
    assert set(comparison) == COMPARISON
    assert comparison["size_ratio"] < 0.5
    assert set(comparison["speedup_p50"]) == {"1", "4"}
    assert comparison["metric"] == "accuracy"
    assert comparison["accuracy_drop"] == comparison["drop"]
    assert comparison["max_drop"] == 0.05
    assert comparison["within_tolerance"] is (comparison["drop"] <= 0.05)
    intervals = comparison["speedup_interval"]
    assert set(intervals) == {"1", "4"}
    assert all(low <= high for low, high in intervals.values())
    # Slower only where the paired runs' interval lies wholly below 1.
    slower = any(s < 1.0 and intervals[b][1] < 1.0 for b, s in comparison["speedup_p50"].items())
    assert comparison["slower_than_baseline"] is slower
    assert ("SLOWER" in comparison["verdict"]) is slower
    assert "smaller" in comparison["verdict"]
    env = metrics["environment"]
    assert env["execution_provider"] == "CPUExecutionProvider" and env["threads"] == 1
    assert env["versions"]["onnxruntime"] and env["cpu_model"]

    assert [p["kind"] for p in result.passes] == ["quantize"]
    assert result.passes[0]["method"] == "static"
    assert result.passes[0]["details"]["quantized_nodes"] > 0
    assert result.passes[0]["duration_s"] >= 0
    assert result.passes[0]["sensitivity"]["status"] == "ok"
    assert [kind for kind, _, _ in result.artifacts] == ["stage_model", "sensitivity"]

    stages = list(dict.fromkeys(stage for stage, _, _ in events))
    assert stages == [
        "loading",
        "quantizing",
        "calibrating",
        "analyzing",
        "measuring",
        "evaluating",
        "benchmarking",
    ]
    fractions = [fraction for _, fraction, _ in events]
    assert fractions == sorted(fractions)
    assert fractions[0] >= 0.0 and fractions[-1] <= 1.0


def test_without_evaluate_fidelity_comes_from_synthetic_inputs(tmp_path: Path, mlp: Path) -> None:
    spec = PipelineSpec.model_validate(
        {"passes": [{"kind": "quantize", "method": "dynamic"}], "benchmark": FAST_BENCHMARK}
    )
    result = run_pipeline(model_path=mlp, spec=spec, datasets={}, workdir=tmp_path)
    metrics = result.metrics
    json.dumps(metrics, allow_nan=False)
    assert metrics["fidelity"]["source"] == "synthetic_inputs"
    assert metrics["fidelity"]["samples"] == 32
    assert metrics["baseline"]["accuracy"] is None
    comparison = metrics["comparison"]
    assert comparison["metric"] == "fidelity"
    assert comparison["drop"] == pytest.approx(1 - metrics["fidelity"]["cosine_mean"])
    assert comparison["within_tolerance"] is None and comparison["max_drop"] is None
    assert comparison["accuracy_drop"] is None
    assert "accuracy not checked" in comparison["verdict"]
    assert metrics["benchmark"]["inputs"]["source"] == "synthetic"
    assert any("accuracy was not measured" in note for note in result.notes)
    (kind, name, path), *_ = [a for a in result.artifacts if a[0] != "stage_model"]
    report = json.loads(path.read_text())
    assert (kind, name) == ("sensitivity", "pass1-sensitivity.json")
    assert report["status"] == "ok" and report["inputs"]["source"] == "synthetic_inputs"


@pytest.mark.parametrize(
    "quantize",
    [
        {"method": "dynamic", "per_channel": True},
        {"method": "static", "calibration": {"dataset_id": "data", "samples": 8}},
        {"method": "fp16"},
        {"method": "int4_weight_only"},
        {"method": "dynamic", "scope": "partial", "include": {"op_types": ["MatMul"]}},
    ],
    ids=["dynamic", "static", "fp16", "int4", "partial"],
)
def test_every_method_gives_a_model_the_pipeline_accepts(
    tmp_path: Path, mlp: Path, mlp_data: Path, quantize: dict[str, Any]
) -> None:
    # The pipeline describes each pass's output with the ONNX checker and runs it: a method
    # whose output onnxruntime happens to load but the checker refuses fails the job here.
    spec = PipelineSpec.model_validate(
        {
            "passes": [{"kind": "quantize", **quantize}],
            "evaluate": {"dataset_id": "data", "samples": 16},
            "benchmark": FAST_BENCHMARK,
        }
    )
    result = run_pipeline(model_path=mlp, spec=spec, datasets={"data": mlp_data}, workdir=tmp_path)

    assert inspect_model(result.model_path).inputs[0].dtype == "float32"
    assert result.metrics["fidelity"]["cosine_mean"] > 0.99


def test_every_quantize_pass_gets_a_sensitivity_report(tmp_path: Path) -> None:
    model = make_outlier_mlp(tmp_path / "outlier.onnx")
    data = make_inputs(tmp_path / "outlier.npz")
    spec = PipelineSpec.model_validate(
        {
            "passes": [
                {
                    "kind": "quantize",
                    "method": "static",
                    "calibration": {"dataset_id": "cal", "samples": 32},
                }
            ],
            "benchmark": {**FAST_BENCHMARK, "batch_sizes": [2]},
        }
    )
    result = run_pipeline(
        model_path=model, spec=spec, datasets={"cal": data}, workdir=tmp_path / "w"
    )
    assert [(kind, name) for kind, name, _ in result.artifacts] == [
        ("stage_model", "pass1-quantize.onnx"),
        ("sensitivity", "pass1-sensitivity.json"),
    ]
    report = json.loads(result.artifacts[1][2].read_text())
    assert report["status"] == "ok"
    assert report["inputs"] == {"source": "pass_dataset", "dataset_id": "cal"}
    ranked = [node for node in report["nodes"] if node["quantized"]]
    assert [node["rank"] for node in ranked] == list(range(1, len(ranked) + 1))
    local = [node["local_sqnr_db"] for node in ranked]
    assert local == sorted(local) and ranked[0]["exclude"] == [SENSITIVE_NODE]
    assert report["suggested_pass"] == {
        "kind": "quantize",
        "method": "static",
        "calibration": {"dataset_id": "cal", "samples": 32},
        "scope": "partial",
        "exclude": {"nodes": [SENSITIVE_NODE]},
    }
    summary = result.passes[0]["sensitivity"]
    assert summary["suggested_exclude"] == [SENSITIVE_NODE]
    assert summary["worst_nodes"][0] == ranked[0]["node"] and len(summary["worst_nodes"]) == 3
    assert summary["artifact"] == "pass1-sensitivity.json"


def _say(**overrides: Any) -> str:
    arguments: dict[str, Any] = {
        "size_ratio": 0.263,
        "speedups": {"8": 1.9},
        "metric": "accuracy",
        "drop": 0.002,
        "max_drop": 0.01,
        "fidelity": {"cosine_mean": 0.9991, "source": "synthetic_inputs"},
    }
    arguments.update(overrides)
    # Unless given, each speedup was measured without spread: its interval is itself.
    arguments.setdefault("intervals", {b: (s, s) for b, s in arguments["speedups"].items()})
    return _verdict(**arguments)


def test_verdict_sentences() -> None:
    assert _say() == "3.8x smaller, 1.9x faster at batch 8, accuracy drop 0.2 points (within 1.0)"
    slow = _say(speedups={"1": 0.81}, drop=0.0)
    assert slow == "3.8x smaller, no accuracy drop but SLOWER than the original at batch 1 (0.81x)"
    mixed = _say(speedups={"1": 0.9, "8": 1.5})
    assert "1.5x faster at batch 8" in mixed and "SLOWER than the original at batch 1" in mixed
    assert "DROPPED 3.0 points, over the 1.0-point limit" in _say(drop=0.03)
    assert _say(size_ratio=1.2).startswith("1.9x faster at batch 8")
    assert "NOT smaller" in _say(size_ratio=1.2)
    assert "1.02x faster" in _say(speedups={"1": 1.02})
    # Near 1x, enough digits to tell which side of 1 the measurement fell on.
    assert "SLOWER than the original at batch 4 (0.998x)" in _say(speedups={"4": 0.998})
    assert "1.003x faster at batch 1" in _say(speedups={"1": 1.003})
    # With the paired runs' 95% interval: a change counts only when the interval excludes 1.
    noisy = _say(speedups={"1": 0.98, "8": 1.9}, intervals={"1": (0.95, 1.01), "8": (1.8, 2.0)})
    assert noisy == (
        "3.8x smaller, 1.9x faster at batch 8, no measurable speed difference at batch 1 "
        "(0.98x), accuracy drop 0.2 points (within 1.0)"
    )
    clear = _say(speedups={"1": 0.98}, intervals={"1": (0.97, 0.99)})
    assert "SLOWER than the original at batch 1 (0.98x)" in clear
    assert "no measurable" in _say(speedups={"1": 1.05}, intervals={"1": (0.99, 1.1)})
    fidelity = _say(metric="fidelity", drop=0.02, max_drop=0.01)
    assert "OVER the 0.01 limit" in fidelity
    unchecked = _say(metric="fidelity", drop=0.0009, max_drop=None)
    assert unchecked.endswith(
        "; output cosine similarity 0.9991 on synthetic inputs (accuracy not checked)"
    )


def test_calibration_data_stands_in_for_evaluation(
    tmp_path: Path, mlp: Path, mlp_data: Path
) -> None:
    spec = PipelineSpec.model_validate(
        {
            "passes": [
                {"kind": "quantize", "method": "static", "calibration": {"dataset_id": "cal"}}
            ],
            "benchmark": {**FAST_BENCHMARK, "batch_sizes": [2]},
        }
    )
    result = run_pipeline(model_path=mlp, spec=spec, datasets={"cal": mlp_data}, workdir=tmp_path)
    assert result.metrics["fidelity"]["source"] == "calibration_dataset"
    assert result.metrics["fidelity"]["samples"] == 32
    assert result.metrics["benchmark"]["inputs"]["source"] == "calibration_dataset"
    assert result.metrics["comparison"]["within_tolerance"] is None


def test_symbolic_model_with_nothing_to_quantize(tmp_path: Path) -> None:
    model = make_sequence_model(tmp_path / "seq.onnx")
    spec = PipelineSpec.model_validate(
        {
            "passes": [{"kind": "quantize", "method": "dynamic"}],
            "benchmark": {**FAST_BENCHMARK, "batch_sizes": [2], "input_shapes": {"x": [1, 5, 8]}},
        }
    )
    result = run_pipeline(model_path=model, spec=spec, datasets={}, workdir=tmp_path / "work")
    json.dumps(result.metrics, allow_nan=False)
    assert result.passes[0]["details"]["quantized_nodes"] == 0
    assert any("no node was quantized" in note for note in result.notes)
    assert result.metrics["fidelity"]["cosine_mean"] == pytest.approx(1.0)
    assert "NOT smaller" in result.metrics["comparison"]["verdict"]


STAGE = {
    "pass",
    "kind",
    "method",
    "duration_s",
    "notes",
    "artifact",
    "size_bytes",
    "size_ratio",
    "parameter_count",
    "parameter_ratio",
    "latency_p50_ms",
    "original_latency_p50_ms",
    "speedup_p50",
    "accuracy",
    "original_accuracy",
    "accuracy_drop",
    "fidelity",
    "measurement",
}


def test_each_pass_is_a_measured_stage_with_its_own_model(
    tmp_path: Path, mlp: Path, mlp_data: Path
) -> None:
    spec = PipelineSpec.model_validate(
        {
            "passes": [partial_quantize("fc2"), partial_quantize("fc1")],
            "evaluate": {"dataset_id": "data", "max_drop": 0.1, "samples": 32},
            "benchmark": {**FAST_BENCHMARK, "iterations": 50},
        }
    )
    seen: list[tuple[dict[str, Any], ArtifactFiles]] = []
    events: list[tuple[str, float, str]] = []
    result = run_pipeline(
        model_path=mlp,
        spec=spec,
        datasets={"data": mlp_data},
        workdir=tmp_path,
        progress=lambda *event: events.append(event),
        on_stage=lambda stage, files: seen.append((stage, list(files))),
    )

    json.dumps(result.stages, allow_nan=False)
    assert [stage for stage, _ in seen] == result.stages
    first, second = result.stages
    assert [(s["pass"], s["kind"], s["method"]) for s in result.stages] == [
        (1, "quantize", "dynamic"),
        (2, "quantize", "dynamic"),
    ]
    for stage in result.stages:
        assert set(stage) == STAGE
        assert set(stage["latency_p50_ms"]) == set(stage["speedup_p50"]) == {"1", "4"}
        assert stage["measurement"]["iterations"] == 20  # shorter than the final 50
        assert stage["original_accuracy"] == 1.0 and stage["accuracy"] is not None
        assert stage["fidelity"]["cosine_mean"] > 0.95 and stage["fidelity"]["samples"] == 32
        assert stage["accuracy_drop"] == stage["original_accuracy"] - stage["accuracy"]
    # fc2 (256x256) is most of the weights; fc1 (16x256) shrinks the model a little more.
    assert second["size_bytes"] < first["size_bytes"] < 0.6 * model_size(mlp)
    assert first["size_ratio"] == round(first["size_bytes"] / model_size(mlp), 4)
    # int8 weights keep their element count (plus a scale and a zero point each).
    assert first["parameter_count"] >= inspect_model(mlp).parameter_count
    assert first["parameter_ratio"] >= 1.0
    assert result.metrics["optimized"]["size_bytes"] == second["size_bytes"]
    assert [p["kind"] for p in result.passes] == ["quantize", "quantize"]

    names = [(kind, name) for kind, name, _ in result.artifacts]
    assert names == [
        ("stage_model", "pass1-quantize.onnx"),
        ("sensitivity", "pass1-sensitivity.json"),
        ("stage_model", "pass2-quantize.onnx"),
        ("sensitivity", "pass2-sensitivity.json"),
    ]
    assert [files for _, files in seen] == [result.artifacts[:2], result.artifacts[2:]]
    inputs = {"x": np.load(mlp_data)["x"][:4]}
    for kind, _, path in result.artifacts:
        if kind == "stage_model":
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            assert session.run(None, inputs)[0].shape == (4, 4)

    measuring = [fraction for stage, fraction, _ in events if stage == "measuring"]
    assert len(measuring) >= 4
    fractions = [fraction for _, fraction, _ in events]
    assert fractions == sorted(fractions)


def test_a_failing_later_pass_keeps_the_stages_before_it(tmp_path: Path, mlp: Path) -> None:
    spec = PipelineSpec.model_validate(
        {
            "passes": [partial_quantize("fc2"), partial_quantize("no_such_node")],
            "benchmark": FAST_BENCHMARK,
        }
    )
    seen: list[tuple[dict[str, Any], ArtifactFiles]] = []
    with pytest.raises(OptimizerError, match="no_such_node"):
        run_pipeline(
            model_path=mlp,
            spec=spec,
            datasets={},
            workdir=tmp_path,
            on_stage=lambda stage, files: seen.append((stage, list(files))),
        )
    [(stage, files)] = seen
    assert stage["pass"] == 1 and stage["fidelity"]["source"] == "synthetic_inputs"
    assert [(kind, name) for kind, name, _ in files] == [
        ("stage_model", "pass1-quantize.onnx"),
        ("sensitivity", "pass1-sensitivity.json"),
    ]
    assert all(path.is_file() for _, _, path in files)
