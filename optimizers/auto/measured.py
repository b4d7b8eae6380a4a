"""The numbers of one finished trial, read from its job result, and the objectives that rank
them."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: Job statuses after which a trial changes no more.
FINAL_STATUSES = frozenset({"succeeded", "failed", "canceled"})
#: Float noise allowed when comparing a drop with its limit (as the job's own verdict does).
_EPSILON = 1e-9


@dataclass(frozen=True)
class Measured:
    """A trial against the original at the search's batch size."""

    speedup: float
    low: float
    high: float
    size_ratio: float
    drop: float
    max_drop: float
    metric: str
    verdict: str
    #: Nodes the trial's last quantize pass found most sensitive (suggested exclusions first).
    sensitive_nodes: tuple[str, ...] = ()
    #: Nodes a quantize pass in scope `mixed` kept in float; None for other recipes.
    kept_float: int | None = None

    @property
    def within_tolerance(self) -> bool:
        return self.drop <= self.max_drop + _EPSILON

    @property
    def clearly_slower(self) -> bool:
        """The whole 95% interval of the paired speed-ups lies below 1."""
        return self.high < 1.0

    @property
    def clearly_faster(self) -> bool:
        return self.low > 1.0


def comparison_of(result: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """A job result's comparison with the original (under `metrics`, as a worker stores it)."""
    if not result:
        return None
    metrics = result.get("metrics")
    if isinstance(metrics, Mapping) and isinstance(metrics.get("comparison"), Mapping):
        return metrics["comparison"]
    found = result.get("comparison")
    return found if isinstance(found, Mapping) else None


def measured(
    result: Mapping[str, Any] | None, *, batch_size: int, max_drop: float
) -> Measured | None:
    """The trial's numbers at `batch_size`, or None when its result lacks them."""
    comparison = comparison_of(result)
    if comparison is None:
        return None
    batch = str(batch_size)
    try:
        speedup = float(comparison["speedup_p50"][batch])
        low, high = (float(x) for x in comparison["speedup_interval"][batch])
        size_ratio = float(comparison["size_ratio"])
        drop = float(comparison["drop"])
    except (KeyError, TypeError, ValueError):
        return None
    if not all(math.isfinite(x) for x in (speedup, low, high, size_ratio, drop)):
        return None
    limit = comparison.get("max_drop")
    return Measured(
        speedup=speedup,
        low=low,
        high=high,
        size_ratio=size_ratio,
        drop=drop,
        max_drop=float(limit) if isinstance(limit, int | float) else max_drop,
        metric=str(comparison.get("metric") or "fidelity"),
        verdict=str(comparison.get("verdict") or ""),
        sensitive_nodes=sensitive_nodes(result),
        kept_float=len(report.kept_float) if (report := mixed_report(result)) else None,
    )


@dataclass(frozen=True)
class MixedReport:
    """What the per-node loop of a quantize pass in scope `mixed` did, measured on its own
    dataset (`details` of optimizers/quantization/mixed.py)."""

    kept_float: tuple[str, ...]
    drop: float
    max_drop: float
    #: Whether a round reached `max_drop` there.
    met: bool


def mixed_report(result: Mapping[str, Any] | None) -> MixedReport | None:
    """The last quantize pass's mixed-precision details, or None when it had none."""
    passes = (result or {}).get("passes") or []
    for entry in reversed(passes):
        if not isinstance(entry, Mapping) or entry.get("kind") != "quantize":
            continue
        details = entry.get("details")
        if not isinstance(details, Mapping) or details.get("scope") != "mixed":
            return None
        try:
            kept = tuple(
                str(node["node"]) for node in details.get("kept_float") or [] if node.get("node")
            )
            drop, limit = float(details["drop"]), float(details["max_drop"])
        except (KeyError, TypeError, ValueError, AttributeError):
            return None
        if not (math.isfinite(drop) and math.isfinite(limit)):
            return None
        return MixedReport(
            kept_float=kept, drop=drop, max_drop=limit, met=bool(details.get("met_max_drop"))
        )
    return None


def sensitive_nodes(result: Mapping[str, Any] | None, *, most: int = 8) -> tuple[str, ...]:
    """The nodes the last quantize pass's sensitivity report names: its suggested exclusions,
    else its worst nodes (`result["passes"][i]["sensitivity"]`, see
    optimizers/quantization/sensitivity_report.py)."""
    passes = (result or {}).get("passes") or []
    for entry in reversed(passes):
        report = entry.get("sensitivity") if isinstance(entry, Mapping) else None
        if not isinstance(report, Mapping) or report.get("status") == "failed":
            continue
        nodes = list(report.get("suggested_exclude") or []) or list(report.get("worst_nodes") or [])
        names = [str(node) for node in nodes if isinstance(node, str) and node]
        return tuple(dict.fromkeys(names))[:most]
    return ()


def score(objective: str, numbers: Measured) -> float:
    """Higher is better. `latency`: the speed-up at the search's batch size; `size`: the
    smallest file (1 / size ratio); `balanced`: speed-up / size ratio, so a model twice as
    fast at half the size scores 4."""
    size = max(numbers.size_ratio, 1e-6)
    if objective == "size":
        return 1.0 / size
    if objective == "balanced":
        return numbers.speedup / size
    return numbers.speedup


def rank_key(objective: str, numbers: Measured, key: str) -> tuple[float, float, str]:
    """Sort key, best first: the objective, then the speed-up, then the trial key (so equal
    numbers always rank the same way)."""
    return (-score(objective, numbers), -numbers.speedup, key)
