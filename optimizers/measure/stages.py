"""Each pass's output measured against the original on the job's data, as a stage of the
job's result, and what the benchmark fed, precisely enough to feed the same again."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from optimizers.batching import BatchLayout
from optimizers.config import EvaluateConfig, PipelineSpec
from optimizers.external_data import has_external_data, model_size_bytes
from optimizers.measure.benchmark import benchmark_pair, input_shape, make_feeds
from optimizers.measure.evaluate import evaluate, fidelity_on_inputs
from optimizers.model_info import inspect_model
from optimizers.results import (
    ModelInfo,
    ProgressFn,
    no_progress,
)

#: Samples for fidelity when the spec has no evaluate section.
FIDELITY_SAMPLES = 32
#: Stage benchmarks are short (at most this many warm-up runs and timed runs per batch size):
#: they show the trend from pass to pass; the final comparison uses the spec's full settings.
STAGE_WARMUP, STAGE_ITERATIONS = 3, 20


def stage_model_name(path: Path, stem: str) -> str:
    """The artifact name of a stage's model: `stem.onnx`, or `stem.zip` when its weights
    live in external data files (the caller packages the model with them)."""
    return f"{stem}.zip" if has_external_data(path) else f"{stem}.onnx"


@dataclass
class StageMeasure:
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
                "inputs": benchmark_inputs(self.spec, self.bench_dataset_id),
                "note": (
                    f"a short benchmark ({bench['iterations']} timed runs per batch size, "
                    "original and stage interleaved); the final comparison uses the spec's "
                    "benchmark settings"
                ),
            },
        }


def relabel(progress: ProgressFn, stage: str, prefix: str) -> ProgressFn:
    """Progress of a helper (evaluate, benchmark) reported under another stage name."""

    def report(_: str, fraction: float, message: str) -> None:
        progress(stage, fraction, prefix + message)

    return report


def benchmark_inputs(spec: PipelineSpec, dataset_id: str | None) -> str:
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
        "source": benchmark_inputs(spec, dataset_id),
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
