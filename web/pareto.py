"""The Pareto-best of several optimized models: those no other one beats on every count
(faster, smaller, and with no larger drop) while being strictly better on at least one."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Candidate:
    key: str
    speedup: float
    size_ratio: float
    #: Accuracy or fidelity drop; None when it was not measured (then it can beat nothing).
    drop: float | None


def _costs(candidate: Candidate) -> tuple[float, float, float]:
    """Every objective as a cost to minimise."""
    drop = math.inf if candidate.drop is None else candidate.drop
    return (-candidate.speedup, candidate.size_ratio, drop)


def dominates(a: Candidate, b: Candidate) -> bool:
    costs_a, costs_b = _costs(a), _costs(b)
    return all(x <= y for x, y in zip(costs_a, costs_b, strict=True)) and costs_a != costs_b


def pareto_best(candidates: Sequence[Candidate]) -> set[str]:
    """Keys of the candidates that no other candidate dominates (a few dozen jobs at most:
    the quadratic scan is plenty)."""
    return {
        c.key
        for c in candidates
        if not any(dominates(other, c) for other in candidates if other is not c)
    }
