"""A real API server and Celery worker (embedded broker, SQLite, local storage) for the
client and CLI tests, and the tiny model and dataset from examples/."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.processes import ROOT, Service, run_service


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    yield from run_service(tmp_path_factory.mktemp("client-service"), None)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with examples/make_tiny_model.py's tiny.onnx and tiny.npz."""
    folder = tmp_path_factory.mktemp("tiny")
    subprocess.run(
        [sys.executable, str(ROOT / "examples" / "make_tiny_model.py"), str(folder)], check=True
    )
    return folder
