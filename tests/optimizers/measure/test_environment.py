"""A result says where it was measured: the cores it ran on and how many threads it used
follow the process's CPU affinity (a worker's MODELPRESS_CPUS), not the host's core count."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from optimizers.measure.environment import describe_environment
from optimizers.measure.runtime import default_threads, usable_cores


@pytest.fixture
def pinned_to_core_0() -> Iterator[None]:
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {0})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def test_threads_and_cores_follow_the_affinity(pinned_to_core_0: None) -> None:
    assert usable_cores() == [0]
    assert default_threads() == 1
    environment = describe_environment("CPUExecutionProvider", default_threads())
    assert environment["cores"] == [0]
    assert environment["threads"] == 1
    assert environment["device"] == "cpu" and environment["gpu_device"] is None


def test_unpinned_the_result_lists_every_core_it_may_use() -> None:
    environment = describe_environment("CPUExecutionProvider", 1)
    assert environment["cores"] == sorted(os.sched_getaffinity(0))
    assert environment["execution_provider"] == "CPUExecutionProvider"
