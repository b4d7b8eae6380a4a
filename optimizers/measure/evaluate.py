"""Compare an optimized model with its baseline on the same inputs: accuracy against labels
and fidelity of the optimized outputs to the baseline's."""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from optimizers.batching import BatchLayout, batch_layout
from optimizers.config import EvaluateConfig
from optimizers.datasets import check_fits, inspect_dataset, iter_feeds
from optimizers.errors import EvaluationError
from optimizers.measure.runtime import create_session
from optimizers.model_info import inspect_model
from optimizers.results import ProgressFn, no_progress

#: SQNR reported when the outputs are identical (no error at all), so the number stays finite
#: in JSON; 200 dB is far beyond any float32 rounding difference.
SQNR_CAP_DB = 200.0


def evaluate(
    baseline: Path,
    optimized: Path,
    dataset: Path,
    config: EvaluateConfig,
    *,
    providers: list[str],
    threads: int,
    progress: ProgressFn = no_progress,
    progress_span: tuple[float, float] = (0.0, 1.0),
    layout: BatchLayout | None = None,
) -> dict[str, Any]:
    """Run both models over the dataset (first `config.samples` rows, in file order) and
    return accuracies (None without labels) and the fidelity of the first output. `layout`
    says which axis of each input is its batch (default: decided from the model alone)."""
    model = inspect_model(baseline)
    layout = layout or batch_layout(model)
    data = inspect_dataset(dataset)
    check_fits(
        model, data, purpose="evaluate", need_labels=config.metric == "accuracy", layout=layout
    )
    batch_size = layout.fixed or config.batch_size
    total = min(config.samples or data.num_samples, data.num_samples)

    base_session = _session(baseline, providers, threads)
    opt_session = _session(optimized, providers, threads)
    fidelity = FidelityAccumulator()
    correct = {"baseline": 0, "optimized": 0}
    want_accuracy = data.has_labels
    start, end = progress_span
    done = 0
    for batch in iter_feeds(dataset, model, layout, batch_size, limit=total):
        # A fixed batch axis takes only full batches: the padded rows' outputs are dropped.
        rows, feeds = batch.rows, batch.feeds
        ref = _first_output(base_session, feeds, "baseline")[:rows]
        out = _first_output(opt_session, feeds, "optimized")[:rows]
        fidelity.add(ref, out)
        if want_accuracy:
            if ref.ndim != 2:
                if config.metric == "accuracy":
                    raise EvaluationError(
                        f"the accuracy metric needs a first output of shape [batch, classes]; "
                        f"'{model.outputs[0].name}' has shape {list(ref.shape)}. Use metric "
                        "'fidelity'"
                    )
                want_accuracy = False
            else:
                labels = batch.labels
                correct["baseline"] += int(np.sum(np.argmax(ref, axis=-1) == labels))
                correct["optimized"] += int(np.sum(np.argmax(out, axis=-1) == labels))
        done += rows
        progress("evaluating", start + (end - start) * done / total, f"{done}/{total} samples")

    return {
        "baseline_accuracy": correct["baseline"] / done if want_accuracy else None,
        "optimized_accuracy": correct["optimized"] / done if want_accuracy else None,
        "fidelity": fidelity.result(source="dataset"),
    }


def fidelity_on_inputs(
    baseline: Path,
    optimized: Path,
    feeds: Iterable[dict[str, np.ndarray]],
    *,
    providers: list[str],
    threads: int,
    source: str = "synthetic_inputs",
) -> dict[str, Any]:
    """Fidelity of the optimized model's first output on the given feeds, for jobs that have
    no evaluation dataset."""
    base_session = _session(baseline, providers, threads)
    opt_session = _session(optimized, providers, threads)
    fidelity = FidelityAccumulator()
    for feed in feeds:
        fidelity.add(
            _first_output(base_session, feed, "baseline"),
            _first_output(opt_session, feed, "optimized"),
        )
    return fidelity.result(source=source)


class FidelityAccumulator:
    """Running fidelity statistics of optimized outputs against reference outputs."""

    def __init__(self) -> None:
        self._cosines: list[np.ndarray] = []
        self._ref_energy = 0.0
        self._error_energy = 0.0
        self._max_abs_error = 0.0
        self._top1_agree = 0
        self._classifier = True

    def add(self, ref: np.ndarray, out: np.ndarray) -> None:
        if ref.shape != out.shape:
            raise EvaluationError(
                f"the optimized model's first output has shape {list(out.shape)} but the "
                f"baseline's has {list(ref.shape)}; the pass changed the model's interface"
            )
        if ref.ndim == 0:
            raise EvaluationError("the first output is a scalar; it has no per-sample values")
        ref64 = ref.reshape(len(ref), -1).astype(np.float64)
        out64 = out.reshape(len(out), -1).astype(np.float64)
        dots = np.sum(ref64 * out64, axis=1)
        norms = np.linalg.norm(ref64, axis=1) * np.linalg.norm(out64, axis=1)
        both_zero = ~ref64.any(axis=1) & ~out64.any(axis=1)
        # Two all-zero outputs agree perfectly; one all-zero output does not agree at all.
        cosines = np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), both_zero * 1.0)
        self._cosines.append(np.clip(cosines, -1.0, 1.0))
        error = ref64 - out64
        self._ref_energy += float(np.sum(ref64 * ref64))
        self._error_energy += float(np.sum(error * error))
        self._max_abs_error = max(self._max_abs_error, float(np.max(np.abs(error), initial=0.0)))
        self._classifier = self._classifier and ref.ndim == 2 and ref.shape[1] > 1
        if self._classifier:
            self._top1_agree += int(np.sum(np.argmax(ref, axis=1) == np.argmax(out, axis=1)))

    def result(self, *, source: str) -> dict[str, Any]:
        if not self._cosines:
            raise EvaluationError("no samples were evaluated")
        cosines = np.concatenate(self._cosines)
        samples = len(cosines)
        return {
            "cosine_mean": float(np.mean(cosines)),
            "cosine_min": float(np.min(cosines)),
            "max_abs_error": self._max_abs_error,
            "sqnr_db": _sqnr_db(self._ref_energy, self._error_energy),
            "top1_agreement": self._top1_agree / samples if self._classifier else None,
            "samples": samples,
            "source": source,
        }


def _sqnr_db(signal: float, noise: float) -> float:
    if noise == 0.0:
        return SQNR_CAP_DB
    if signal == 0.0:
        return -SQNR_CAP_DB
    return max(-SQNR_CAP_DB, min(SQNR_CAP_DB, 10.0 * math.log10(signal / noise)))


def _session(path: Path, providers: list[str], threads: int) -> ort.InferenceSession:
    if not providers:
        raise ValueError("providers must name at least one execution provider")
    return create_session(path, provider=providers[0], threads=threads)


def _first_output(
    session: ort.InferenceSession, feeds: dict[str, np.ndarray], which: str
) -> np.ndarray:
    try:
        output = np.asarray(session.run(None, feeds)[0])
    except Exception as exc:
        raise EvaluationError(f"the {which} model failed to run: {exc}") from exc
    if output.dtype.kind not in "biuf":
        raise EvaluationError(
            f"the {which} model's first output has dtype {output.dtype}; fidelity needs numbers"
        )
    if not np.all(np.isfinite(output)):
        raise EvaluationError(
            f"the {which} model produced NaN or infinite values in its first output"
        )
    return output
