from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from optimizers.config import BenchmarkConfig
from optimizers.errors import UnsupportedError
from optimizers.measure.benchmark import (
    _load_and_measure,
    benchmark_pair,
    make_feeds,
    paired_speedup,
)
from optimizers.model_info import inspect_model
from tests.models.onnx_basic import make_mlp
from tests.models.sequences import make_sequence_model
from tests.optimizers.helpers import save_npz


def test_benchmark_reports_every_number(mlp: Path) -> None:
    model = inspect_model(mlp)
    config = BenchmarkConfig(batch_sizes=[1, 4], warmup=2, iterations=5, threads=1)
    events: list[tuple[str, float, str]] = []
    result = benchmark_pair(
        mlp,
        mlp,
        config,
        feeds_for_batch=lambda batch: make_feeds(model, batch, dataset=None, input_shapes=None),
        progress=lambda *event: events.append(event),
        progress_span=(0.6, 0.97),
    )
    assert result["provider"] == "CPUExecutionProvider"
    assert result["threads"] == 1
    for name in ("baseline", "optimized"):
        measured = result[name]
        assert set(measured["latency_ms"]) == {"1", "4"}
        for stats in measured["latency_ms"].values():
            assert set(stats) == {"p50", "p90", "p95", "p99", "mean"}
            assert all(value > 0 for value in stats.values())
            assert stats["p50"] <= stats["p90"] <= stats["p95"] <= stats["p99"]
        assert all(value > 0 for value in measured["throughput_per_s"].values())
        assert measured["peak_memory_bytes"] >= 0
    assert {stage for stage, _, _ in events} == {"benchmarking"}
    fractions = [fraction for _, fraction, _ in events]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(0.97)


def test_a_model_doing_far_more_work_is_measurably_slower(tmp_path: Path) -> None:
    small = make_mlp(tmp_path / "small.onnx", in_features=64, hidden=16, classes=4)
    large = make_mlp(tmp_path / "large.onnx", in_features=64, hidden=2048, classes=4)
    model = inspect_model(small)
    config = BenchmarkConfig(batch_sizes=[32], warmup=2, iterations=20, threads=1)
    result = benchmark_pair(
        small,
        large,
        config,
        feeds_for_batch=lambda batch: make_feeds(model, batch, dataset=None, input_shapes=None),
    )
    paired = result["speedup_paired"]["32"]
    assert paired["low"] <= paired["median"] <= paired["high"] < 1.0


def test_paired_speedup_interval() -> None:
    assert paired_speedup([100] * 20, [50] * 20) == {"median": 2.0, "low": 2.0, "high": 2.0}
    # Runs that go either way around equal times: the interval contains 1.
    baseline = [100, 104, 97, 101, 99, 103, 96, 100, 102, 98] * 3
    even = paired_speedup(baseline, [100] * 30)
    assert even["low"] < 1.0 < even["high"]
    # With fewer than 6 runs the interval is their whole range.
    assert paired_speedup([90, 100, 110], [100, 100, 100]) == {
        "median": 1.0,
        "low": 0.9,
        "high": 1.1,
    }


def test_peak_memory_counts_the_model(tmp_path: Path) -> None:
    # About 8 MB of weights: the session holds at least one copy of them.
    path = make_mlp(tmp_path / "big.onnx", in_features=1024, hidden=1400, classes=8)
    feeds = {"x": np.zeros((2, 1024), np.float32)}
    _, peak = _load_and_measure(
        path, provider="CPUExecutionProvider", threads=1, feeds=feeds, name="baseline"
    )
    assert peak > 4_000_000


def test_make_feeds_from_a_dataset_repeats_rows(tmp_path: Path, mlp: Path) -> None:
    rows = np.arange(3 * 16, dtype=np.float32).reshape(3, 16)
    data = save_npz(tmp_path / "d.npz", x=rows, labels=np.zeros(3, np.int64))
    feeds = make_feeds(inspect_model(mlp), 5, dataset=data, input_shapes=None)
    assert list(feeds) == ["x"]
    np.testing.assert_array_equal(feeds["x"], rows[[0, 1, 2, 0, 1]])


def test_synthetic_feeds_are_deterministic(tmp_path: Path) -> None:
    model = inspect_model(make_sequence_model(tmp_path / "seq.onnx"))
    shapes = {"x": [1, 6, 8]}
    first = make_feeds(model, 3, dataset=None, input_shapes=shapes, seed=0)
    again = make_feeds(model, 3, dataset=None, input_shapes=shapes, seed=0)
    other = make_feeds(model, 3, dataset=None, input_shapes=shapes, seed=1)
    assert first["x"].shape == (3, 6, 8) and first["x"].dtype == np.float32
    np.testing.assert_array_equal(first["x"], again["x"])
    assert not np.array_equal(first["x"], other["x"])
    with pytest.raises(UnsupportedError, match="symbolic size 'seq' on axis 1"):
        make_feeds(model, 3, dataset=None, input_shapes=None)


@pytest.mark.skipif(
    "CUDAExecutionProvider" in ort.get_available_providers(), reason="this machine has CUDA"
)
def test_cuda_without_a_cuda_provider_is_unsupported(mlp: Path) -> None:
    with pytest.raises(UnsupportedError, match="no CUDA execution provider"):
        benchmark_pair(mlp, mlp, BenchmarkConfig(device="cuda"), feeds_for_batch=lambda batch: {})


def test_each_model_is_timed_in_runs_of_its_own(mlp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As a user timing one session after the other: a timed run follows a run of the same
    model (the other model's weights are not the ones in the caches), blocks alternate."""
    import optimizers.measure.benchmark as benchmark

    model = inspect_model(mlp)
    runs: list[str] = []
    real_run = benchmark._run

    def recording_run(session: ort.InferenceSession, feeds: dict, name: str) -> None:
        runs.append(name)
        real_run(session, feeds, name)

    monkeypatch.setattr(benchmark, "_run", recording_run)
    config = BenchmarkConfig(batch_sizes=[2], warmup=3, iterations=25, threads=1)
    result = benchmark_pair(
        mlp,
        mlp,
        config,
        feeds_for_batch=lambda batch: make_feeds(model, batch, dataset=None, input_shapes=None),
    )
    loading, warmup, timed = runs[:2], runs[2:8], runs[8:]
    assert loading == ["baseline", "optimized"]
    assert warmup == ["baseline"] * 3 + ["optimized"] * 3
    streaks = [(name, len(list(group))) for name, group in itertools.groupby(timed)]
    # Blocks of 10 timed runs (25 = 10 + 10 + 5), each after one untimed run; the order
    # swaps every block (B O, O B, B O), so same-model blocks meet in the middle.
    assert streaks == [("baseline", 11), ("optimized", 22), ("baseline", 17), ("optimized", 6)]
    assert result["timing"]["block_runs"] == 10
