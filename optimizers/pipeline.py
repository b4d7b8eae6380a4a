"""Run a whole job spec on one model: passes, then evaluation and a benchmark of the result
against the original, measured the same way in the same process."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from optimizers.benchmark import benchmark_pair, make_feeds
from optimizers.checks import check_spec
from optimizers.config import AnyPass, EvaluateConfig, PipelineSpec
from optimizers.datasets import inspect_dataset
from optimizers.environment import describe_environment
from optimizers.errors import (
    DatasetMismatchError,
    InvalidModelError,
    OptimizerError,
    PassOutputError,
)
from optimizers.evaluate import evaluate, fidelity_on_inputs
from optimizers.external_data import model_size_bytes
from optimizers.inspect import inspect_model
from optimizers.passes import run_pass
from optimizers.runtime import create_session, default_threads, resolve_provider
from optimizers.sensitivity import analysis_feeds, analyze, failed_report
from optimizers.types import (
    DatasetInfo,
    ModelInfo,
    PassContext,
    PassResult,
    ProgressFn,
    no_progress,
)

#: Progress fractions of the whole job at which each stage starts.
PASSES_START, EVALUATE_START, BENCHMARK_START, BENCHMARK_END = 0.05, 0.45, 0.6, 0.97
#: Samples for fidelity when the spec has no evaluate section.
FIDELITY_SAMPLES = 32
#: Share of each quantize pass's progress span spent on its sensitivity report.
ANALYSIS_SHARE = 0.15
#: Float noise allowed when comparing a drop with its limit (1 - 0.99 is 0.010000000000000009).
_TOLERANCE_EPSILON = 1e-9


@dataclass
class PipelineResult:
    model_path: Path
    metrics: dict[str, Any]
    notes: list[str]
    passes: list[dict[str, Any]]
    #: Extra files for the user: (kind, file name, path), e.g. a sensitivity report per pass.
    artifacts: list[tuple[str, str, Path]] = field(default_factory=list)


def run_pipeline(
    *,
    model_path: Path,
    spec: PipelineSpec,
    datasets: Mapping[str, Path],
    workdir: Path,
    progress: ProgressFn = no_progress,
) -> PipelineResult:
    """Apply `spec` to the model at `model_path`; intermediate and final models go to
    `workdir`. `datasets` maps each dataset id of the spec to its `.npz` file."""
    progress("loading", 0.0, "inspecting the model")
    model = inspect_model(model_path)
    dataset_infos = {
        dataset_id: _inspect(datasets, dataset_id) for dataset_id in spec.dataset_ids()
    }
    check_spec(model, spec, dataset_infos)
    provider = resolve_provider(spec.benchmark.device)
    threads = spec.benchmark.threads or default_threads()
    # Fail before minutes of quantization if the runtime cannot even load the original.
    create_session(model_path, provider=provider, threads=threads)
    progress("loading", PASSES_START, "model loaded")

    notes: list[str] = []
    passes: list[dict[str, Any]] = []
    artifacts: list[tuple[str, str, Path]] = []
    current = model_path
    width = (EVALUATE_START - PASSES_START) / len(spec.passes)
    for index, config in enumerate(spec.passes):
        span = (PASSES_START + index * width, PASSES_START + (index + 1) * width)
        analyzed = config.kind == "quantize"
        split = span[1] - ANALYSIS_SHARE * width if analyzed else span[1]
        ctx = PassContext(
            workdir=workdir / f"pass{index + 1}-{config.kind}",
            datasets=datasets,
            progress=progress,
            progress_span=(span[0], split),
        )
        began = time.perf_counter()
        result = run_pass(current, config, ctx)
        duration = time.perf_counter() - began
        _check_loads(result.model_path, kind=config.kind, provider=provider, threads=threads)
        entry: dict[str, Any] = {
            "kind": config.kind,
            "method": getattr(config, "method", None),
            "duration_s": round(duration, 3),
            "details": result.details,
            "notes": result.notes,
        }
        if analyzed:
            progress("analyzing", split, f"pass {index + 1}: measuring per-node sensitivity")
            name = f"pass{index + 1}-sensitivity.json"
            report = _sensitivity(
                current, result, config, spec, model, datasets, provider, threads, ctx.workdir
            )
            result.artifacts["sensitivity"] = ctx.workdir / "sensitivity.json"
            entry["sensitivity"] = _sensitivity_summary(report, name)
            progress("analyzing", span[1], f"pass {index + 1}: sensitivity report written")
        passes.append(entry)
        notes.extend(result.notes)
        artifacts.extend(
            (kind, f"pass{index + 1}-{kind}{path.suffix}", path)
            for kind, path in result.artifacts.items()
        )
        current = result.model_path

    progress("evaluating", EVALUATE_START, "comparing outputs")
    bench_dataset_id = _benchmark_dataset_id(spec)
    bench_dataset = datasets[bench_dataset_id] if bench_dataset_id else None
    accuracy: dict[str, float | None] = {"baseline": None, "optimized": None}
    if spec.evaluate is not None:
        evaluated = evaluate(
            model_path,
            current,
            datasets[spec.evaluate.dataset_id],
            spec.evaluate,
            providers=[provider],
            threads=threads,
            progress=progress,
            progress_span=(EVALUATE_START, BENCHMARK_START),
        )
        accuracy = {
            "baseline": evaluated["baseline_accuracy"],
            "optimized": evaluated["optimized_accuracy"],
        }
        fidelity = evaluated["fidelity"]
    elif bench_dataset is not None:
        fidelity = evaluate(
            model_path,
            current,
            bench_dataset,
            EvaluateConfig(
                dataset_id=str(bench_dataset_id), metric="fidelity", samples=FIDELITY_SAMPLES
            ),
            providers=[provider],
            threads=threads,
        )["fidelity"]
        fidelity["source"] = "calibration_dataset"
        notes.append(
            "accuracy was not measured: the spec has no evaluate section; fidelity was measured "
            f"on the first {fidelity['samples']} calibration samples"
        )
    else:
        fidelity = fidelity_on_inputs(
            model_path,
            current,
            _synthetic_feeds(model, spec),
            providers=[provider],
            threads=threads,
        )
        notes.append(
            "accuracy was not measured: the spec has no evaluate section; fidelity was measured "
            "on random inputs, which may not reflect real data"
        )

    progress("benchmarking", BENCHMARK_START, "benchmarking both models")
    bench = benchmark_pair(
        model_path,
        current,
        spec.benchmark,
        feeds_for_batch=lambda batch: make_feeds(
            model, batch, dataset=bench_dataset, input_shapes=spec.benchmark.input_shapes
        ),
        progress=progress,
        progress_span=(BENCHMARK_START, BENCHMARK_END),
    )

    # External data files count: a model is as large as everything it needs to load.
    sizes = {"baseline": model_size_bytes(model_path), "optimized": model_size_bytes(current)}
    measured = {
        name: {
            "size_bytes": sizes[name],
            "latency_ms": bench[name]["latency_ms"],
            "throughput_per_s": bench[name]["throughput_per_s"],
            "peak_memory_bytes": bench[name]["peak_memory_bytes"],
            "accuracy": accuracy[name],
        }
        for name in ("baseline", "optimized")
    }
    metrics: dict[str, Any] = {
        **measured,
        "fidelity": fidelity,
        "comparison": _compare(spec, measured, fidelity),
        "benchmark": {
            "provider": bench["provider"],
            "threads": bench["threads"],
            "warmup": bench["warmup"],
            "iterations": bench["iterations"],
            "inputs": _benchmark_inputs(spec, bench_dataset_id),
        },
        "environment": describe_environment(provider, threads),
    }
    # The metrics are stored as JSON; NaN or infinity here would be a bug in this module.
    json.dumps(metrics, allow_nan=False)
    return PipelineResult(
        model_path=current, metrics=metrics, notes=notes, passes=passes, artifacts=artifacts
    )


def _inspect(datasets: Mapping[str, Path], dataset_id: str) -> DatasetInfo:
    try:
        path = datasets[dataset_id]
    except KeyError:
        raise DatasetMismatchError(f"dataset '{dataset_id}' was not provided") from None
    return inspect_dataset(path)


def _check_loads(path: Path, *, kind: str, provider: str, threads: int) -> None:
    try:
        create_session(path, provider=provider, threads=threads)
    except InvalidModelError as exc:
        raise PassOutputError(
            f"the model produced by the {kind} pass does not load in onnxruntime: {exc.message}"
        ) from exc


def _sensitivity(
    baseline: Path,
    result: PassResult,
    config: AnyPass,
    spec: PipelineSpec,
    model: ModelInfo,
    datasets: Mapping[str, Path],
    provider: str,
    threads: int,
    workdir: Path,
) -> dict[str, Any]:
    """The sensitivity report of one quantize pass (its input against its output), written
    as JSON in the pass's workdir. A report that failed says why; the job goes on."""
    dataset_ids = config.dataset_ids()
    if spec.evaluate is not None:
        dataset_id: str | None = spec.evaluate.dataset_id
        source = "evaluate_dataset"
    elif dataset_ids:
        dataset_id, source = dataset_ids[0], "pass_dataset"
    else:
        dataset_id, source = None, "synthetic_inputs"
    try:
        feeds = analysis_feeds(
            model,
            dataset=datasets[dataset_id] if dataset_id else None,
            input_shapes=spec.benchmark.input_shapes,
        )
        report = analyze(
            baseline,
            result.model_path,
            feeds,
            pass_config=config.model_dump(mode="json", exclude_defaults=True),
            provider=provider,
            threads=threads,
        )
    except OptimizerError as exc:  # e.g. synthetic inputs for a model with symbolic dims
        report = failed_report(baseline, result.model_path, exc.message)
    report["inputs"] = {"source": source, "dataset_id": dataset_id}
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "sensitivity.json").write_text(json.dumps(report, indent=2, allow_nan=False))
    return report


def _sensitivity_summary(report: dict[str, Any], artifact: str) -> dict[str, Any]:
    ranked = [node for node in report["nodes"] if node["quantized"]]
    return {
        "status": report["status"],
        "error": report["error"],
        "worst_nodes": [node["node"] for node in ranked[:3]],
        "suggested_exclude": report["suggested_exclude"]["nodes"],
        "artifact": artifact,
    }


def _benchmark_dataset_id(spec: PipelineSpec) -> str | None:
    """Benchmark inputs come from the evaluate dataset, else a pass's dataset (calibration)."""
    if spec.evaluate is not None:
        return spec.evaluate.dataset_id
    for config in spec.passes:
        for dataset_id in config.dataset_ids():
            return dataset_id
    return None


def _benchmark_inputs(spec: PipelineSpec, dataset_id: str | None) -> str:
    if dataset_id is None:
        return "synthetic"
    return "evaluate_dataset" if spec.evaluate is not None else "calibration_dataset"


def _synthetic_feeds(model: ModelInfo, spec: PipelineSpec) -> Iterator[dict[str, np.ndarray]]:
    batch = max(spec.benchmark.batch_sizes)
    for seed in range(max(1, math.ceil(FIDELITY_SAMPLES / batch))):
        yield make_feeds(
            model, batch, dataset=None, input_shapes=spec.benchmark.input_shapes, seed=seed
        )


def _compare(
    spec: PipelineSpec, measured: dict[str, dict[str, Any]], fidelity: dict[str, Any]
) -> dict[str, Any]:
    base, opt = measured["baseline"], measured["optimized"]
    size_ratio = opt["size_bytes"] / base["size_bytes"]
    speedups = {
        batch: round(base["latency_ms"][batch]["p50"] / opt["latency_ms"][batch]["p50"], 3)
        for batch in base["latency_ms"]
    }
    accuracy_drop = (
        base["accuracy"] - opt["accuracy"]
        if base["accuracy"] is not None and opt["accuracy"] is not None
        else None
    )
    fidelity_loss = max(0.0, 1.0 - fidelity["cosine_mean"])
    max_drop: float | None = None
    within: bool | None = None
    if (
        spec.evaluate is not None
        and accuracy_drop is not None
        and spec.evaluate.metric != "fidelity"
    ):
        metric, drop = "accuracy", accuracy_drop
    else:
        metric, drop = "fidelity", fidelity_loss
    if spec.evaluate is not None:
        max_drop = spec.evaluate.max_drop
        within = drop <= max_drop + _TOLERANCE_EPSILON
    return {
        "size_ratio": round(size_ratio, 4),
        "speedup_p50": speedups,
        "accuracy_drop": accuracy_drop,
        "metric": metric,
        "drop": drop,
        "max_drop": max_drop,
        "slower_than_baseline": any(s < 1.0 for s in speedups.values()),
        "within_tolerance": within,
        "verdict": _verdict(
            size_ratio=size_ratio,
            speedups=speedups,
            metric=metric,
            drop=drop,
            max_drop=max_drop,
            fidelity=fidelity,
        ),
    }


def _verdict(
    *,
    size_ratio: float,
    speedups: dict[str, float],
    metric: str,
    drop: float,
    max_drop: float | None,
    fidelity: dict[str, Any],
) -> str:
    """One plain sentence: what got better first, then what got worse, in capitals, so that
    a slower or less accurate model is never read as an improvement."""
    good: list[str] = []
    bad: list[str] = []
    if size_ratio < 1.0:
        good.append(f"{_times(1.0 / size_ratio)} smaller")
    else:
        bad.append(f"NOT smaller ({size_ratio:.2f}x the original size)")

    faster = [(batch, s) for batch, s in speedups.items() if s >= 1.0]
    slower = [(batch, s) for batch, s in speedups.items() if s < 1.0]
    if faster:
        (first_batch, first), *others = faster
        good.append(
            f"{_times(first)} faster at batch {first_batch}"
            + "".join(f", {_times(s)} at batch {batch}" for batch, s in others)
        )
    if slower:
        parts = [f"batch {batch} ({s:.2f}x)" for batch, s in slower]
        bad.append("SLOWER than the original at " + " and ".join(parts))

    neutral = ""
    if max_drop is None:
        neutral = (
            f"output cosine similarity {fidelity['cosine_mean']:.4f} on "
            f"{fidelity['source'].replace('_', ' ')} (accuracy not checked)"
        )
    elif metric == "accuracy":
        if drop <= 0.0:
            good.append(
                "no accuracy drop" if drop == 0.0 else f"accuracy up {_points(-drop)} points"
            )
        elif drop <= max_drop + _TOLERANCE_EPSILON:
            good.append(f"accuracy drop {_points(drop)} points (within {_points(max_drop)})")
        else:
            bad.append(
                f"accuracy DROPPED {_points(drop)} points, over the {_points(max_drop)}-point limit"
            )
    elif drop <= max_drop + _TOLERANCE_EPSILON:
        good.append(f"fidelity loss {drop:.2g} (1 - cosine, within {max_drop:g})")
    else:
        bad.append(f"fidelity loss {drop:.2g} (1 - cosine) is OVER the {max_drop:g} limit")

    sentence = ", ".join(good)
    if bad:
        sentence = f"{sentence} but {', '.join(bad)}" if sentence else ", ".join(bad)
    if neutral:
        sentence = f"{sentence}; {neutral}"
    return sentence[:1].upper() + sentence[1:]


def _times(ratio: float) -> str:
    # Two decimals near 1x, where "1.0x faster" would hide whether it is faster at all.
    return f"{ratio:.1f}x" if ratio >= 1.1 else f"{ratio:.2f}x"


def _points(fraction: float) -> str:
    points = fraction * 100.0
    return f"{points:.1f}" if abs(points) >= 0.1 else f"{points:.2g}"


def preload() -> None:
    """Import what the passes load lazily (quantization pre-processing pulls in torch and
    sympy through onnxruntime.tools), so that a long-lived worker pays for it once at start
    instead of inside its first job, where it would stall heartbeats for many seconds."""
    import onnxruntime.quantization.shape_inference
    import onnxruntime.tools.symbolic_shape_infer  # noqa: F401

    from optimizers.passes import registered_passes

    registered_passes()
