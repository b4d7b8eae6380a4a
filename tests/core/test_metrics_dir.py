"""The metrics folder a machine's processes share: what a process that ended leaves there."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from core.metrics import MULTIPROC_ENV, prepare_metrics_dir
from core.settings import Settings


def _ended_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def _files(directory: Path) -> set[str]:
    return {path.name for path in directory.iterdir()}


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    # Restored after the test: this process's metrics stay where they were.
    monkeypatch.setenv(MULTIPROC_ENV, os.environ.get(MULTIPROC_ENV, str(tmp_path)))
    return Settings(data_dir=tmp_path / "data", metrics_dir=tmp_path / "metrics")


def test_a_fresh_start_clears_what_ended_processes_left(settings: Settings) -> None:
    directory = settings.resolved_metrics_dir
    directory.mkdir(parents=True)
    ended = _ended_pid()
    for name in (f"counter_{ended}.db", f"histogram_{ended}.db", f"gauge_livemax_{ended}.db"):
        (directory / name).write_bytes(b"")

    assert prepare_metrics_dir(settings) == directory
    assert os.environ[MULTIPROC_ENV] == str(directory)
    assert _files(directory) == set()


def test_counts_of_an_ended_process_stay_while_others_run(settings: Settings) -> None:
    directory = settings.resolved_metrics_dir
    directory.mkdir(parents=True)
    ended, running = _ended_pid(), os.getpid()
    for pid in (ended, running):
        for name in (f"counter_{pid}.db", f"histogram_{pid}.db", f"gauge_livemax_{pid}.db"):
            (directory / name).write_bytes(b"")

    prepare_metrics_dir(settings)
    # Its counters and histograms stay in the sums; its live gauges (last heartbeat) go.
    assert _files(directory) == {
        f"counter_{ended}.db",
        f"histogram_{ended}.db",
        f"counter_{running}.db",
        f"histogram_{running}.db",
        f"gauge_livemax_{running}.db",
    }


def test_the_folder_defaults_to_the_data_folder(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    assert settings.resolved_metrics_dir == (tmp_path / "data" / "metrics").resolve()
