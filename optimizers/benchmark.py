"""Measure a baseline and an optimized model the same way, in the same process: latency
percentiles, throughput and peak memory per model."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import psutil

from optimizers.config import BenchmarkConfig
from optimizers.datasets import inspect_dataset, load_batch
from optimizers.errors import BenchmarkError, UnsupportedError
from optimizers.runtime import create_session, default_threads, resolve_provider
from optimizers.types import ModelInfo, ProgressFn, TensorInfo, no_progress

FeedsFn = Callable[[int], dict[str, np.ndarray]]
#: Seconds between progress reports while timing.
_REPORT_INTERVAL_S = 0.2
_MODELS = ("baseline", "optimized")


def benchmark_pair(
    baseline: Path,
    optimized: Path,
    config: BenchmarkConfig,
    *,
    feeds_for_batch: FeedsFn,
    progress: ProgressFn = no_progress,
    progress_span: tuple[float, float] = (0.0, 1.0),
) -> dict[str, Any]:
    """Latency per batch size (warm-up, then the two models' runs interleaved so that drift
    in machine load hits both alike), throughput and peak memory of both models."""
    provider = resolve_provider(config.device)
    threads = config.threads or default_threads()
    start, end = progress_span
    largest = max(config.batch_sizes)
    feeds_cache = {largest: feeds_for_batch(largest)}

    sessions: dict[str, ort.InferenceSession] = {}
    peak_memory: dict[str, int] = {}
    for index, (name, path) in enumerate(zip(_MODELS, (baseline, optimized), strict=True)):
        progress("benchmarking", start + (end - start) * 0.05 * index, f"loading the {name} model")
        sessions[name], peak_memory[name] = _load_and_measure(
            path, provider=provider, threads=threads, feeds=feeds_cache[largest], name=name
        )

    latencies: dict[str, dict[str, dict[str, float]]] = {name: {} for name in _MODELS}
    throughput: dict[str, dict[str, float]] = {name: {} for name in _MODELS}
    paired: dict[str, dict[str, float]] = {}
    total_steps = len(config.batch_sizes) * config.iterations
    last_report = time.monotonic()
    for batch_index, batch in enumerate(config.batch_sizes):
        feeds = feeds_cache.pop(batch) if batch in feeds_cache else feeds_for_batch(batch)
        for _ in range(config.warmup):
            for name in _MODELS:
                _run(sessions[name], feeds, name)
        times_ns: dict[str, list[int]] = {name: [] for name in _MODELS}
        for iteration in range(config.iterations):
            for name in _MODELS:
                began = time.perf_counter_ns()
                _run(sessions[name], feeds, name)
                times_ns[name].append(time.perf_counter_ns() - began)
            # Reported by time, not by count: a caller that cancels through the progress
            # callback gets control back within a fraction of a second on any model.
            if time.monotonic() - last_report >= _REPORT_INTERVAL_S:
                last_report = time.monotonic()
                step = batch_index * config.iterations + iteration
                progress(
                    "benchmarking",
                    start + (end - start) * (0.1 + 0.9 * step / total_steps),
                    f"batch {batch}: iteration {iteration + 1}/{config.iterations}",
                )
        for name in _MODELS:
            stats = _latency_stats(times_ns[name])
            latencies[name][str(batch)] = stats
            throughput[name][str(batch)] = round(batch / (stats["mean"] / 1000.0), 2)
        paired[str(batch)] = paired_speedup(times_ns["baseline"], times_ns["optimized"])
    progress("benchmarking", end, "benchmark finished")

    result: dict[str, Any] = {
        name: {
            "latency_ms": latencies[name],
            "throughput_per_s": throughput[name],
            "peak_memory_bytes": peak_memory[name],
        }
        for name in _MODELS
    }
    result.update(
        threads=threads,
        provider=provider,
        warmup=config.warmup,
        iterations=config.iterations,
        speedup_paired=paired,
    )
    return result


def paired_speedup(baseline_ns: list[int], optimized_ns: list[int]) -> dict[str, float]:
    """The median of the speedups of back-to-back runs (baseline time / optimized time) with
    a distribution-free 95% interval for it (order statistics of the sorted speedups; with
    fewer than 6 runs, their whole range). Runs are paired because they were timed in turn,
    under the same load: an interval that contains 1 means no measurable difference."""
    ratios = np.sort(
        np.asarray(baseline_ns, dtype=np.float64)
        / np.maximum(np.asarray(optimized_ns, dtype=np.float64), 1.0)
    )
    count = len(ratios)
    if count == 0:
        raise ValueError("no timed runs")
    # Rank k (1-based) of the lower bound: P(Binomial(n, 1/2) < k) is about 2.5%.
    rank = max(1, int((count - 1.96 * count**0.5) / 2))
    return {
        "median": round(float(np.median(ratios)), 3),
        "low": round(float(ratios[rank - 1]), 3),
        "high": round(float(ratios[count - rank]), 3),
    }


def make_feeds(
    model: ModelInfo,
    batch: int,
    *,
    dataset: Path | None,
    input_shapes: dict[str, list[int]] | None,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Inputs for one run at `batch`: the dataset's first rows (repeated when it has fewer),
    else deterministic random data shaped by `input_shapes` or the model's fixed dims."""
    names = [tensor.name for tensor in model.inputs]
    if dataset is not None:
        samples = inspect_dataset(dataset).num_samples
        return load_batch(dataset, names, np.arange(batch) % samples)
    rng = np.random.default_rng(seed)
    return {
        tensor.name: _synthetic(tensor, _shape(tensor, batch, input_shapes or {}), rng)
        for tensor in model.inputs
    }


def _shape(tensor: TensorInfo, batch: int, input_shapes: dict[str, list[int]]) -> list[int]:
    if not tensor.shape:
        return []
    given = input_shapes.get(tensor.name)
    if given is not None:
        return [batch, *given[1:]]
    shape = [batch]
    for axis, dim in enumerate(tensor.shape[1:], 1):
        if not isinstance(dim, int):
            raise UnsupportedError(
                f"model input '{tensor.name}' has a symbolic size '{dim}' on axis {axis}; give "
                "benchmark.input_shapes or a dataset so the benchmark knows what to feed"
            )
        shape.append(dim)
    return shape


def _synthetic(tensor: TensorInfo, shape: list[int], rng: np.random.Generator) -> np.ndarray:
    dtype = np.dtype(tensor.dtype)
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    if dtype.kind in "biu":
        # 0 and 1 are valid for most integer inputs (token ids, indices, masks, flags).
        return rng.integers(0, 2, size=shape).astype(dtype)
    raise UnsupportedError(
        f"cannot make synthetic data for input '{tensor.name}' of type {tensor.dtype}; "
        "provide a dataset"
    )


def _load_and_measure(
    path: Path, *, provider: str, threads: int, feeds: dict[str, np.ndarray], name: str
) -> tuple[ort.InferenceSession, int]:
    """Create the session and run it once on the largest batch; the peak resident memory
    this adds to the process is the model's memory cost (host memory only on GPUs)."""
    gc.collect()
    _release_free_heap()
    peak_reset = _reset_peak_rss()
    before = _rss_bytes()
    session = create_session(path, provider=provider, threads=threads)
    _run(session, feeds, name)
    after = _peak_rss_bytes() if peak_reset else None
    if after is None:
        # Without a resettable peak counter the growth of current RSS is the best estimate.
        after = _rss_bytes()
    return session, max(0, after - before)


def _release_free_heap() -> None:
    # Memory freed by earlier sessions stays resident in malloc's free lists; a new model
    # reusing it would add nothing to RSS and look free. Hand it back to the OS first (glibc).
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _reset_peak_rss() -> bool:
    # Linux: writing 5 resets VmHWM to the current RSS, so each model's peak is its own.
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _peak_rss_bytes() -> int | None:
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return None


def _rss_bytes() -> int:
    return int(psutil.Process().memory_info().rss)


def _run(session: ort.InferenceSession, feeds: dict[str, np.ndarray], name: str) -> None:
    try:
        session.run(None, feeds)
    except Exception as exc:
        raise BenchmarkError(f"the {name} model failed to run: {exc}") from exc


def _latency_stats(times_ns: list[int]) -> dict[str, float]:
    ms = np.asarray(times_ns, dtype=np.float64) / 1e6
    p50, p90, p95, p99 = np.percentile(ms, [50, 90, 95, 99])
    return {
        "p50": _round_ms(p50),
        "p90": _round_ms(p90),
        "p95": _round_ms(p95),
        "p99": _round_ms(p99),
        "mean": _round_ms(float(np.mean(ms))),
    }


def _round_ms(value: float) -> float:
    # Four decimals keep 0.1 µs, finer than timer noise; never 0 so ratios stay defined.
    return max(round(float(value), 4), 0.0001)
