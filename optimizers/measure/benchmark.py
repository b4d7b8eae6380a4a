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

from optimizers.batching import BatchLayout, batch_layout
from optimizers.config import BenchmarkConfig
from optimizers.datasets import inspect_dataset, load_batch, read_once, to_feeds
from optimizers.errors import BenchmarkError, UnsupportedError
from optimizers.measure.runtime import (
    create_session,
    default_threads,
    resolve_provider,
    session_options_record,
)
from optimizers.results import ModelInfo, ProgressFn, TensorInfo, no_progress

FeedsFn = Callable[[int], dict[str, np.ndarray]]
#: Seconds between progress reports while timing.
_REPORT_INTERVAL_S = 0.2
_MODELS = ("baseline", "optimized")
#: Timed runs of one model in a row before the other model's turn, and untimed runs first
#: (the other model's run left its own weights in the caches).
BLOCK_RUNS, REWARM_RUNS = 10, 1


def benchmark_pair(
    baseline: Path,
    optimized: Path,
    config: BenchmarkConfig,
    *,
    feeds_for_batch: FeedsFn,
    progress: ProgressFn = no_progress,
    progress_span: tuple[float, float] = (0.0, 1.0),
) -> dict[str, Any]:
    """Latency per batch size (warm-up, then the two models' runs in alternating blocks so that
    drift in machine load hits both alike), throughput and peak memory of both models."""
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
        for name in _MODELS:
            for _ in range(config.warmup):
                _run(sessions[name], feeds, name)
        times_ns: dict[str, list[int]] = {name: [] for name in _MODELS}
        for block, size in enumerate(timing_blocks(config.iterations)):
            # Each model is timed in a block of consecutive runs, as a user timing one session
            # after the other does: alternating run by run started every run with the other
            # model's weights in the caches and moved the speedup 5-50% from what plain
            # sessions timed in turn measure (docs/performance.md). Blocks alternate in order
            # so drift in machine load still hits both models alike.
            order = _MODELS if block % 2 == 0 else _MODELS[::-1]
            for name in order:
                for _ in range(REWARM_RUNS):
                    _run(sessions[name], feeds, name)
                for _ in range(size):
                    began = time.perf_counter_ns()
                    _run(sessions[name], feeds, name)
                    times_ns[name].append(time.perf_counter_ns() - began)
            # Reported by time, not by count: a caller that cancels through the progress
            # callback gets control back within a fraction of a second on any model.
            if time.monotonic() - last_report >= _REPORT_INTERVAL_S:
                last_report = time.monotonic()
                done = len(times_ns["optimized"])
                step = batch_index * config.iterations + done
                progress(
                    "benchmarking",
                    start + (end - start) * (0.1 + 0.9 * step / total_steps),
                    f"batch {batch}: iteration {done}/{config.iterations}",
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
        session_options=session_options_record(threads),
        timing=timing_record(config),
    )
    return result


def timing_blocks(iterations: int) -> list[int]:
    """Sizes of the blocks of consecutive timed runs per model that add up to `iterations`."""
    return [min(BLOCK_RUNS, iterations - done) for done in range(0, iterations, BLOCK_RUNS)]


def timing_record(config: BenchmarkConfig) -> dict[str, Any]:
    """How the runs were ordered and timed, for a result to say how to reproduce it."""
    return {
        "order": "blocks",
        "description": (
            f"per batch size: {config.warmup} warm-up runs of each model in turn, then blocks "
            f"of up to {BLOCK_RUNS} consecutive timed runs per model, baseline first in even "
            f"blocks and optimized first in odd ones, each block after {REWARM_RUNS} untimed "
            "run; every run is one session.run timed with a monotonic clock; latency "
            "percentiles over all timed runs"
        ),
        "block_runs": BLOCK_RUNS,
        "rewarm_runs": REWARM_RUNS,
        "clock": "time.perf_counter_ns around InferenceSession.run",
        "speedup": "baseline p50 / optimized p50",
    }


def paired_speedup(baseline_ns: list[int], optimized_ns: list[int]) -> dict[str, float]:
    """The median of the speedups of paired runs (the i-th timed run of each model: baseline
    time / optimized time) with a distribution-free 95% interval for it (order statistics of
    the sorted speedups; with fewer than 6 runs, their whole range). Paired runs were timed in
    the same round of blocks, under the same load: an interval that contains 1 means no
    measurable difference."""
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
    layout: BatchLayout | None = None,
) -> dict[str, np.ndarray]:
    """Inputs for one run at `batch`: the dataset's first rows (repeated when it has fewer),
    else deterministic random data shaped by `input_shapes` or the model's fixed dims. Each
    input's batch axis (`layout`; default: decided from the model) takes `batch`; inputs
    without one are fed as the dataset gives them once, or at their given or fixed shape."""
    layout = layout or batch_layout(model)
    if dataset is not None:
        samples = inspect_dataset(dataset).num_samples
        names = layout.batched(model)
        rows = load_batch(dataset, names, np.arange(batch) % samples) if names else {}
        return to_feeds(rows, read_once(dataset, layout.unbatched(model)), layout)
    rng = np.random.default_rng(seed)
    return {
        tensor.name: _synthetic(tensor, input_shape(tensor, batch, input_shapes, layout), rng)
        for tensor in model.inputs
    }


def input_shape(
    tensor: TensorInfo,
    batch: int,
    input_shapes: dict[str, list[int]] | None,
    layout: BatchLayout,
) -> list[int]:
    """The shape fed to `tensor` at `batch`: the given shape as given (its batch axis set to
    `batch`), else the model's sizes with the batch axis set to `batch`."""
    axis = layout.axis(tensor.name)
    given = (input_shapes or {}).get(tensor.name)
    if given is not None:
        shape = list(given)
        if axis is not None:
            shape[axis] = batch
        return shape
    shape = []
    for index, dim in enumerate(tensor.shape):
        if index == axis:
            shape.append(batch)
        elif isinstance(dim, int):
            shape.append(dim)
        else:
            size = f"symbolic size '{dim}'" if isinstance(dim, str) else "dynamic size"
            raise UnsupportedError(
                f"model input '{tensor.name}' has a {size} on axis {index}, which is not its "
                "batch axis; give benchmark.input_shapes or a dataset so the benchmark knows "
                "what to feed"
            )
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
