"""Tiny models and datasets shared by the optimizers tests, built once per session."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.models.onnx_basic import make_dataset, make_mlp


@pytest.fixture(autouse=True)
def _frozen_gc() -> Iterator[None]:
    # The benchmark calls gc.collect() before measuring memory; with torch (imported by
    # quantization pre-processing) and the service loaded, a full collection scans millions
    # of long-lived objects: seconds each. Freezing what exists keeps it cheap in tests.
    gc.freeze()
    yield
    gc.unfreeze()


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def mlp(models_dir: Path) -> Path:
    # Wide enough that int8 weights visibly shrink the file.
    return make_mlp(models_dir / "mlp.onnx", hidden=256)


@pytest.fixture(scope="session")
def mlp_data(models_dir: Path, mlp: Path) -> Path:
    return make_dataset(models_dir / "mlp.npz", mlp, samples=48)
