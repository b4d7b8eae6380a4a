"""Pins the worker to its cores (MODELPRESS_CPUS) before anything else starts: the pool
processes, the job host and every job process inherit the CPU affinity, so two workers given
disjoint core sets never time a benchmark on the same core."""

from __future__ import annotations

import os

from core.cpus import format_cpu_list


class CoresUnavailable(Exception):
    """MODELPRESS_CPUS names cores this process may not run on."""


def pin_to(cores: tuple[int, ...] | None) -> list[int]:
    """Applies `cores` (None: leaves the affinity as started) and returns the affinity now."""
    if cores is not None:
        allowed = os.sched_getaffinity(0)
        outside = sorted(set(cores) - allowed)
        if outside:
            raise CoresUnavailable(
                f"MODELPRESS_CPUS={format_cpu_list(cores)} names core(s) "
                f"{format_cpu_list(outside)} that this worker may not run on; the cores "
                f"available to it are {format_cpu_list(allowed)}"
            )
        os.sched_setaffinity(0, cores)
    return sorted(os.sched_getaffinity(0))
