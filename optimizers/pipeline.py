"""Run a whole job spec on one model: passes, each one's output measured as a stage, then
evaluation and a benchmark of the result against the original, measured the same way in the
same process."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from optimizers.batching import BatchLayout, batch_layout
from optimizers.checks import check_spec
from optimizers.config import EvaluateConfig, PipelineSpec
from optimizers.datasets import inspect_dataset
from optimizers.errors import (
    DatasetMismatchError,
    InvalidModelError,
    PassOutputError,
)
from optimizers.external_data import has_external_data, model_size_bytes
from optimizers.measure.benchmark import benchmark_pair, input_shape, make_feeds
from optimizers.measure.environment import describe_environment
from optimizers.measure.evaluate import evaluate, fidelity_on_inputs
from optimizers.measure.runtime import create_session, default_threads, resolve_provider
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
#: Samples for fidelity when the spec has no evaluate section.
FIDELITY_SAMPLES = 32
#: Share of a pass's progress span spent on its report step (a quantize pass's sensitivity).
REPORT_SHARE = 0.15
#: Share of each pass's progress span spent measuring its output model (the stage).
MEASURE_SHARE = 0.2
#: Stage benchmarks are short (at most this many warm-up runs and timed runs per batch size):
#: they show the trend from pass to pass; the final comparison uses the spec's full settings.
STAGE_WARMUP, STAGE_ITERATIONS = 3, 20
#: Float noise allowed when comparing a drop with its limit (1 - 0.99 is 0.010000000000000009).
_TOLERANCE_EPSILON = 1e-9


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
) -> PipelineResult:
    """Apply `spec` to the model at `model_path`; intermediate and final models go to
    `workdir`. `datasets` maps each dataset id of the spec to its `.npz` file, `models` each
    model id of the spec (distillation students) to its ONNX file. `checkpoints` keeps
    training state across attempts of the same job; each pass sees its own prefix of it."""
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
    measure = _Measure(
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
                progress=_relabel(progress, "measuring", f"pass {number}: "),
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
        "comparison": _compare(spec, measured, fidelity, bench["speedup_paired"]),
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


def stage_model_name(path: Path, stem: str) -> str:
    """The artifact name of a stage's model: `stem.onnx`, or `stem.zip` when its weights
    live in external data files (the caller packages the model with them)."""
    return f"{stem}.zip" if has_external_data(path) else f"{stem}.onnx"


@dataclass
class _Measure:
    """Measures a model against the original on the job's data: quality (accuracy with
    labels, fidelity always), and for stages also size, parameters and a short benchmark."""

    original: Path
    model: ModelInfo
    spec: PipelineSpec
    datasets: Mapping[str, Path]
    bench_dataset_id: str | None
    provider: str
    threads: int
    layout: BatchLayout
    #: The original's size and accuracy do not change from stage to stage.
    _original_size: int | None = None

    def quality(
        self,
        candidate: Path,
        *,
        progress: ProgressFn = no_progress,
        progress_span: tuple[float, float] = (0.0, 1.0),
    ) -> tuple[dict[str, float | None], dict[str, Any]]:
        """({"baseline", "optimized"} accuracy, fidelity) of `candidate`: on the evaluate
        dataset when the spec has one, else on calibration samples, else on random inputs."""
        spec = self.spec
        bench_dataset = self.datasets[self.bench_dataset_id] if self.bench_dataset_id else None
        if spec.evaluate is not None:
            evaluated = evaluate(
                self.original,
                candidate,
                self.datasets[spec.evaluate.dataset_id],
                spec.evaluate,
                providers=[self.provider],
                threads=self.threads,
                progress=progress,
                progress_span=progress_span,
                layout=self.layout,
            )
            accuracy = {
                "baseline": evaluated["baseline_accuracy"],
                "optimized": evaluated["optimized_accuracy"],
            }
            return accuracy, evaluated["fidelity"]
        none: dict[str, float | None] = {"baseline": None, "optimized": None}
        if bench_dataset is not None:
            fidelity = evaluate(
                self.original,
                candidate,
                bench_dataset,
                EvaluateConfig(
                    dataset_id=str(self.bench_dataset_id),
                    metric="fidelity",
                    samples=FIDELITY_SAMPLES,
                ),
                providers=[self.provider],
                threads=self.threads,
                layout=self.layout,
            )["fidelity"]
            fidelity["source"] = "calibration_dataset"
            return none, fidelity
        fidelity = fidelity_on_inputs(
            self.original,
            candidate,
            _synthetic_feeds(self.model, spec, self.layout),
            providers=[self.provider],
            threads=self.threads,
        )
        return none, fidelity

    def stage(
        self,
        candidate: Path,
        *,
        progress: ProgressFn,
        progress_span: tuple[float, float],
    ) -> dict[str, Any]:
        """The numbers of one stage's `candidate` model against the original."""
        start, end = progress_span
        middle = start + (end - start) * 0.4
        if self._original_size is None:
            self._original_size = model_size_bytes(self.original)
        size = model_size_bytes(candidate)
        parameters = inspect_model(candidate).parameter_count
        accuracy, fidelity = self.quality(
            candidate, progress=progress, progress_span=(start, middle)
        )
        settings = self.spec.benchmark.model_copy(
            update={
                "warmup": min(self.spec.benchmark.warmup, STAGE_WARMUP),
                "iterations": min(self.spec.benchmark.iterations, STAGE_ITERATIONS),
            }
        )
        bench_dataset = self.datasets[self.bench_dataset_id] if self.bench_dataset_id else None
        bench = benchmark_pair(
            self.original,
            candidate,
            settings,
            feeds_for_batch=lambda batch: make_feeds(
                self.model,
                batch,
                dataset=bench_dataset,
                input_shapes=self.spec.benchmark.input_shapes,
                layout=self.layout,
            ),
            progress=progress,
            progress_span=(middle, end),
        )
        original_p50 = {b: s["p50"] for b, s in bench["baseline"]["latency_ms"].items()}
        stage_p50 = {b: s["p50"] for b, s in bench["optimized"]["latency_ms"].items()}
        accuracy_drop = (
            accuracy["baseline"] - accuracy["optimized"]
            if accuracy["baseline"] is not None and accuracy["optimized"] is not None
            else None
        )
        return {
            "size_bytes": size,
            "size_ratio": round(size / self._original_size, 4),
            "parameter_count": parameters,
            "parameter_ratio": (
                round(parameters / self.model.parameter_count, 4)
                if self.model.parameter_count
                else None
            ),
            "latency_p50_ms": stage_p50,
            "original_latency_p50_ms": original_p50,
            "speedup_p50": {b: round(original_p50[b] / stage_p50[b], 3) for b in stage_p50},
            "accuracy": accuracy["optimized"],
            "original_accuracy": accuracy["baseline"],
            "accuracy_drop": accuracy_drop,
            "fidelity": fidelity,
            "measurement": {
                "warmup": bench["warmup"],
                "iterations": bench["iterations"],
                "inputs": _benchmark_inputs(self.spec, self.bench_dataset_id),
                "note": (
                    f"a short benchmark ({bench['iterations']} timed runs per batch size, "
                    "original and stage interleaved); the final comparison uses the spec's "
                    "benchmark settings"
                ),
            },
        }


def _relabel(progress: ProgressFn, stage: str, prefix: str) -> ProgressFn:
    """Progress of a helper (evaluate, benchmark) reported under another stage name."""

    def report(_: str, fraction: float, message: str) -> None:
        progress(stage, fraction, prefix + message)

    return report


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


def _benchmark_inputs(spec: PipelineSpec, dataset_id: str | None) -> str:
    if dataset_id is None:
        return "synthetic"
    return "evaluate_dataset" if spec.evaluate is not None else "calibration_dataset"


def benchmark_inputs_record(
    model: ModelInfo,
    spec: PipelineSpec,
    dataset_id: str | None,
    *,
    layout: BatchLayout,
    num_samples: int | None,
) -> dict[str, Any]:
    """What the benchmark fed, precisely enough to feed the same with plain numpy: dataset
    rows, or the seed and the shape of every input at every batch size."""
    record: dict[str, Any] = {
        "source": _benchmark_inputs(spec, dataset_id),
        # A list: JSON objects lose their key order in some databases (PostgreSQL's jsonb).
        "order": [tensor.name for tensor in model.inputs],
        "batch_axes": layout.as_json(),
        "dtypes": {tensor.name: tensor.dtype for tensor in model.inputs},
    }
    if dataset_id is not None:
        record |= {
            "dataset_id": dataset_id,
            "num_samples": num_samples,
            "rows": "at batch size B, rows 0..B-1 of each batched input (row i % num_samples "
            "when the dataset has fewer), the sample axis moved to the input's batch axis; "
            "inputs without a batch axis as given once",
        }
        return record
    shapes = {
        str(batch): {
            tensor.name: input_shape(tensor, batch, spec.benchmark.input_shapes, layout)
            for tensor in model.inputs
        }
        for batch in spec.benchmark.batch_sizes
    }
    record |= {
        "seed": 0,
        "shapes": shapes,
        "generator": "per batch size, rng = numpy.random.default_rng(seed); then for each "
        "input in `order`: float inputs rng.standard_normal(shape).astype(dtype), "
        "integer and bool inputs rng.integers(0, 2, size=shape).astype(dtype)",
    }
    return record


def _synthetic_feeds(
    model: ModelInfo, spec: PipelineSpec, layout: BatchLayout
) -> Iterator[dict[str, np.ndarray]]:
    batch = max(spec.benchmark.batch_sizes)
    for seed in range(max(1, math.ceil(FIDELITY_SAMPLES / batch))):
        yield make_feeds(
            model,
            batch,
            dataset=None,
            input_shapes=spec.benchmark.input_shapes,
            seed=seed,
            layout=layout,
        )


def _compare(
    spec: PipelineSpec,
    measured: dict[str, dict[str, Any]],
    fidelity: dict[str, Any],
    paired: dict[str, dict[str, float]],
) -> dict[str, Any]:
    base, opt = measured["baseline"], measured["optimized"]
    size_ratio = opt["size_bytes"] / base["size_bytes"]
    speedups = {
        batch: round(base["latency_ms"][batch]["p50"] / opt["latency_ms"][batch]["p50"], 3)
        for batch in base["latency_ms"]
    }
    intervals = {batch: (paired[batch]["low"], paired[batch]["high"]) for batch in speedups}
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
        "speedup_interval": {batch: list(bounds) for batch, bounds in intervals.items()},
        "accuracy_drop": accuracy_drop,
        "metric": metric,
        "drop": drop,
        "max_drop": max_drop,
        "slower_than_baseline": any(
            _speed_change(s, intervals[batch]) == "slower" for batch, s in speedups.items()
        ),
        "within_tolerance": within,
        "verdict": _verdict(
            size_ratio=size_ratio,
            speedups=speedups,
            intervals=intervals,
            metric=metric,
            drop=drop,
            max_drop=max_drop,
            fidelity=fidelity,
        ),
    }


def _speed_change(speedup: float, interval: tuple[float, float]) -> str:
    """ "faster", "slower" or "same": a change counts when the 95% interval of the paired
    speedups lies wholly on the side of 1 the median speedup is on."""
    low, high = interval
    if speedup < 1.0 and high < 1.0:
        return "slower"
    if speedup >= 1.0 and low > 1.0:
        return "faster"
    return "same"


def _verdict(
    *,
    size_ratio: float,
    speedups: dict[str, float],
    intervals: dict[str, tuple[float, float]],
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

    change = {batch: _speed_change(s, intervals[batch]) for batch, s in speedups.items()}
    faster = [(batch, s) for batch, s in speedups.items() if change[batch] == "faster"]
    slower = [(batch, s) for batch, s in speedups.items() if change[batch] == "slower"]
    same = [(batch, s) for batch, s in speedups.items() if change[batch] == "same"]
    if faster:
        (first_batch, first), *others = faster
        good.append(
            f"{_times(first)} faster at batch {first_batch}"
            + "".join(f", {_times(s)} at batch {batch}" for batch, s in others)
        )
    if same:
        parts = [f"batch {batch} ({_times(s)})" for batch, s in same]
        good.append("no measurable speed difference at " + " and ".join(parts))
    if slower:
        parts = [f"batch {batch} ({_times(s)})" for batch, s in slower]
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
    # More decimals near 1x, where "1.0x faster" or "SLOWER (1.00x)" would hide which side
    # of 1 the measurement fell on.
    if ratio >= 1.1:
        return f"{ratio:.1f}x"
    text = f"{ratio:.2f}x"
    return f"{ratio:.3f}x" if text == "1.00x" else text


def _points(fraction: float) -> str:
    points = fraction * 100.0
    return f"{points:.1f}" if abs(points) >= 0.1 else f"{points:.2g}"


def preload() -> None:
    """Import what the passes load lazily (quantization pre-processing pulls in torch and
    sympy through onnxruntime.tools), so that a long-lived worker pays for it once at start
    instead of inside its first job, where it would stall heartbeats for many seconds."""
    import onnxruntime.quantization.shape_inference
    import onnxruntime.tools.symbolic_shape_infer  # noqa: F401

    from optimizers.registry import registered_passes

    registered_passes()
