"""Calibration sampling: `random` with a seed picks rows deterministically, streaming."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from optimizers.datasets import iter_picked_batches, pick_rows
from optimizers.registry import run_pass
from optimizers.results import PassContext
from tests.optimizers.helpers import quantize_config


def test_picked_batches_hold_exactly_the_picked_rows(mlp_data: Path) -> None:
    rows = pick_rows(48, 10, seed=3)
    assert np.array_equal(rows, pick_rows(48, 10, seed=3))
    assert not np.array_equal(rows, pick_rows(48, 10, seed=4))
    batches = list(iter_picked_batches(mlp_data, ["x"], 4, rows, chunk=7))
    assert [len(batch["x"]) for batch in batches] == [4, 4, 2]
    everything = np.load(mlp_data)
    assert np.array_equal(np.concatenate([b["x"] for b in batches]), everything["x"][rows])
    assert np.array_equal(
        np.concatenate([b["labels"] for b in batches]), everything["labels"][rows]
    )


def _quantize(tmp_path: Path, mlp: Path, data: Path, name: str, **calibration: object) -> bytes:
    config = quantize_config(
        {"method": "static", "calibration": {"dataset_id": "c", "samples": 8, **calibration}}
    )
    result = run_pass(mlp, config, PassContext(workdir=tmp_path / name, datasets={"c": data}))
    return result.model_path.read_bytes()


def test_random_sampling_is_deterministic_per_seed(
    tmp_path: Path, mlp: Path, mlp_data: Path
) -> None:
    first = _quantize(tmp_path, mlp, mlp_data, "first")
    assert _quantize(tmp_path, mlp, mlp_data, "first2", sampling="first") == first
    seeded = _quantize(tmp_path, mlp, mlp_data, "a", sampling="random", seed=1)
    assert _quantize(tmp_path, mlp, mlp_data, "b", sampling="random", seed=1) == seeded
    assert _quantize(tmp_path, mlp, mlp_data, "c", sampling="random", seed=2) != seeded
    assert seeded != first
