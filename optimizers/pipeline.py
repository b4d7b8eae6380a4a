"""Run a whole job spec on one model: passes, each one's output measured as a stage, then
evaluation and a benchmark of the result against the original, measured the same way in the
same process."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optimizers.batching import batch_layout
from optimizers.checks import check_spec
from optimizers.config import PipelineSpec
from optimizers.datasets import inspect_dataset
from optimizers.errors import (
    DatasetMismatchError,
    InvalidModelError,
    PassOutputError,
)
from optimizers.external_data import model_size_bytes
from optimizers.measure.benchmark import benchmark_pair, make_feeds
from optimizers.measure.environment import describe_environment
from optimizers.measure.runtime import create_session, default_threads, resolve_provider
from optimizers.measure.stages import (
    StageMeasure,
    benchmark_inputs_record,
    relabel,
    stage_model_name,
)
from optimizers.measure.verdict import compare
from optimizers.model_info import inspect_model
from optimizers.registry import report_step, run_pass
from optimizers.results import (
    Checkpoints,
    DatasetInfo,
    ModelInfo,
    NoCheckpoints,
    PassContext,
    PrefixedCheckpoints,
    ProgressFn,
    ReportContext,
    no_progress,
)

#: Progress fractions of the whole job at which each stage starts.
PASSES_START, EVALUATE_START, BENCHMARK_START, BENCHMARK_END = 0.05, 0.45, 0.6, 0.97
#: Share of a pass's progress span spent on its report step (a quantize pass's sensitivity).
REPORT_SHARE = 0.15
#: Share of each pass's progress span spent measuring its output model (the stage).
MEASURE_SHARE = 0.2


#: Files kept for the user: (artifact kind, file name, path).
ArtifactFiles = list[tuple[str, str, Path]]
#: on_stage(stage entry, its files): called as soon as a pass's output is measured, so a caller
#: can keep the stage's model and reports even if a later pass fails. The files include the
#: stage's model (kind `stage_model`, an ONNX file, possibly with external data beside it,
#: named `.zip` when it has external data: the caller packages it) and the pass's reports.
#: Paths stay readable by later passes: a caller that moves a file must copy or link it first.
StageFn = Callable[[dict[str, Any], ArtifactFiles], None]


def no_stage(stage: dict[str, Any], files: ArtifactFiles) -> None:
    return None


@dataclass
class PipelineResult:
    model_path: Path
    metrics: dict[str, Any]
    notes: list[str]
    passes: list[dict[str, Any]]
    #: Per-file artifacts of every pass, in order: its stage model and its reports
    #: (e.g. a sensitivity report per quantize pass); the same files given to `on_stage`.
    artifacts: ArtifactFiles = field(default_factory=list)
    #: One entry per pass, in order: what its output model measures against the original.
    stages: list[dict[str, Any]] = field(default_factory=list)


def run_pipeline(
    *,
    model_path: Path,
    spec: PipelineSpec,
    datasets: Mapping[str, Path],
    workdir: Path,
    progress: ProgressFn = no_progress,
    models: Mapping[str, Path] | None = None,
    checkpoints: Checkpoints | None = None,
    on_stage: StageFn = no_stage,
    calibration_cache: Path | None = None,
    dataset_sha256: Mapping[str, str] | None = None,
) -> PipelineResult:
    """Apply `spec` to the model at `model_path`; intermediate and final models go to
    `workdir`. `datasets` maps each dataset id of the spec to its `.npz` file, `models` each
    model id of the spec (distillation students) to its ONNX file. `checkpoints` keeps
    training state across attempts of the same job; each pass sees its own prefix of it.
    `calibration_cache` is a folder of static calibrations kept between runs, read and added
    to (`dataset_sha256`: the datasets' digests, when known, so that none is hashed)."""
    models = models or {}
    checkpoints = checkpoints or NoCheckpoints()
    progress("loading", 0.0, "inspecting the model")
    model = inspect_model(model_path)
    dataset_infos = {
        dataset_id: _inspect(datasets, dataset_id) for dataset_id in spec.dataset_ids()
    }
    model_infos = {model_id: _inspect_model(models, model_id) for model_id in spec.model_ids()}
    check_spec(model, spec, dataset_infos, models=model_infos)
    layout = batch_layout(model, spec.batch_axes())
    provider = resolve_provider(spec.benchmark.device)
    threads = spec.benchmark.threads or default_threads()
    # Fail before minutes of quantization if the runtime cannot even load the original.
    create_session(model_path, provider=provider, threads=threads)
    progress("loading", PASSES_START, "model loaded")

    notes: list[str] = []
    passes: list[dict[str, Any]] = []
    stages: list[dict[str, Any]] = []
    artifacts: ArtifactFiles = []
    bench_dataset_id = _benchmark_dataset_id(spec)
    measure = StageMeasure(
        original=model_path,
        model=model,
        spec=spec,
        datasets=datasets,
        bench_dataset_id=bench_dataset_id,
        provider=provider,
        threads=threads,
        layout=layout,
    )
    current = model_path
    width = (EVALUATE_START - PASSES_START) / len(spec.passes)
    for index, config in enumerate(spec.passes):
        number = index + 1
        span = (PASSES_START + index * width, PASSES_START + number * width)
        measure_start = span[1] - MEASURE_SHARE * width
        reporter = report_step(type(config))
        split = measure_start - REPORT_SHARE * width if reporter else measure_start
        label = f"pass{number}-{config.kind}"
        ctx = PassContext(
            workdir=workdir / label,
            datasets=datasets,
            progress=progress,
            progress_span=(span[0], split),
            models=models,
            checkpoints=PrefixedCheckpoints(checkpoints, f"{label}/"),
            device=spec.benchmark.device,
            batch_axes=spec.batch_axes(),
            calibration_cache=calibration_cache,
            dataset_sha256=dataset_sha256 or {},
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
        if reporter is not None:
            entry |= reporter(
                current,
                result,
                config,
                ReportContext(
                    number=number,
                    workdir=ctx.workdir,
                    model=model,
                    datasets=datasets,
                    evaluate_dataset_id=spec.evaluate.dataset_id if spec.evaluate else None,
                    input_shapes=spec.benchmark.input_shapes,
                    layout=layout,
                    provider=provider,
                    threads=threads,
                    progress=progress,
                    progress_at=split,
                ),
            )
        progress("measuring", measure_start, f"pass {number}: measuring its model")
        stage_name = stage_model_name(result.model_path, f"pass{number}-{config.kind}")
        stage = {
            "pass": number,
            "kind": config.kind,
            "method": entry["method"],
            "duration_s": entry["duration_s"],
            "notes": result.notes,
            "artifact": stage_name,
            **measure.stage(
                result.model_path,
                progress=relabel(progress, "measuring", f"pass {number}: "),
                progress_span=(measure_start, span[1]),
            ),
        }
        files: ArtifactFiles = [("stage_model", stage_name, result.model_path)]
        files.extend(
            (kind, f"pass{number}-{kind}{path.suffix}", path)
            for kind, path in result.artifacts.items()
        )
        json.dumps(stage, allow_nan=False)
        on_stage(stage, files)
        progress("measuring", span[1], f"pass {number}: measured")
        passes.append(entry)
        stages.append(stage)
        notes.extend(result.notes)
        artifacts.extend(files)
        current = result.model_path

    progress("evaluating", EVALUATE_START, "comparing outputs")
    bench_dataset = datasets[bench_dataset_id] if bench_dataset_id else None
    accuracy, fidelity = measure.quality(
        current, progress=progress, progress_span=(EVALUATE_START, BENCHMARK_START)
    )
    if spec.evaluate is None:
        where = (
            f"on the first {fidelity['samples']} calibration samples"
            if bench_dataset is not None
            else "on random inputs, which may not reflect real data"
        )
        notes.append(
            "accuracy was not measured: the spec has no evaluate section; fidelity was measured "
            + where
        )

    progress("benchmarking", BENCHMARK_START, "benchmarking both models")
    bench = benchmark_pair(
        model_path,
        current,
        spec.benchmark,
        feeds_for_batch=lambda batch: make_feeds(
            model,
            batch,
            dataset=bench_dataset,
            input_shapes=spec.benchmark.input_shapes,
            layout=layout,
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
        "comparison": compare(spec, measured, fidelity, bench["speedup_paired"]),
        "benchmark": {
            "provider": bench["provider"],
            "threads": bench["threads"],
            "warmup": bench["warmup"],
            "iterations": bench["iterations"],
            "batch_sizes": spec.benchmark.batch_sizes,
            "session_options": bench["session_options"],
            "timing": bench["timing"],
            "baseline": "the uploaded model as stored (for PyTorch uploads, its ONNX conversion)",
            "inputs": benchmark_inputs_record(
                model,
                spec,
                bench_dataset_id,
                layout=layout,
                num_samples=dataset_infos[bench_dataset_id].num_samples
                if bench_dataset_id
                else None,
            ),
        },
        "environment": describe_environment(provider, threads),
    }
    # The metrics are stored as JSON; NaN or infinity here would be a bug in this module.
    json.dumps(metrics, allow_nan=False)
    return PipelineResult(
        model_path=current,
        metrics=metrics,
        notes=notes,
        passes=passes,
        artifacts=artifacts,
        stages=stages,
    )


def _inspect_model(models: Mapping[str, Path], model_id: str) -> ModelInfo:
    try:
        path = models[model_id]
    except KeyError:
        raise InvalidModelError(f"model '{model_id}' was not provided") from None
    return inspect_model(path)


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


def _benchmark_dataset_id(spec: PipelineSpec) -> str | None:
    """Benchmark inputs come from the evaluate dataset, else a pass's dataset (calibration)."""
    if spec.evaluate is not None:
        return spec.evaluate.dataset_id
    for config in spec.passes:
        for dataset_id in config.dataset_ids():
            return dataset_id
    return None


def preload() -> None:
    """Import what the passes load lazily (quantization pre-processing pulls in torch and
    sympy through onnxruntime.tools), so that a long-lived worker pays for it once at start
    instead of inside its first job, where it would stall heartbeats for many seconds."""
    import onnxruntime.quantization.shape_inference
    import onnxruntime.tools.symbolic_shape_infer  # noqa: F401

    from optimizers.registry import registered_passes

    registered_passes()
