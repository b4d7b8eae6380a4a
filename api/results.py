"""Typed shapes of a finished job's numbers (`result`) and the compact `summary` that job lists
carry, so a generated client gets classes rather than free-form objects and a comparison of
many jobs needs one request."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Open(BaseModel):
    """Fields named here are typed; others the worker may add later pass through."""

    model_config = ConfigDict(extra="allow")


class LatencyStats(_Open):
    p50: float
    p90: float | None = None
    p95: float | None = None
    p99: float | None = None
    mean: float | None = None


class ModelMeasurement(_Open):
    """One model (the baseline or the optimized one), measured in the job's worker run."""

    size_bytes: int
    latency_ms: dict[str, LatencyStats] = Field(description="Per batch size.")
    throughput_per_s: dict[str, float] = Field(description="Per batch size.")
    peak_memory_bytes: int | None = None
    accuracy: float | None = Field(None, description="With labels in the evaluate dataset.")


class Fidelity(_Open):
    """How close the optimized model's outputs are to the baseline's."""

    cosine_mean: float
    source: str | None = None
    samples: int | None = None


class Comparison(_Open):
    size_ratio: float = Field(description="Optimized size / baseline size.")
    speedup_p50: dict[str, float] = Field(description="Baseline p50 / optimized p50, per batch.")
    speedup_interval: dict[str, list[float]] = Field(
        default_factory=dict, description="95% interval of the paired speedups, per batch."
    )
    accuracy_drop: float | None = None
    metric: str | None = Field(None, description="accuracy or fidelity: what `drop` measures.")
    drop: float | None = None
    max_drop: float | None = None
    slower_than_baseline: bool | None = None
    within_tolerance: bool | None = Field(None, description="None when the spec set no max_drop.")
    verdict: str | None = None


class Metrics(_Open):
    baseline: ModelMeasurement | None = None
    optimized: ModelMeasurement | None = None
    fidelity: Fidelity | None = None
    comparison: Comparison | None = None
    benchmark: dict[str, Any] | None = None
    environment: dict[str, Any] | None = None


class PassRecord(_Open):
    """One pass as it ran."""

    kind: str | None = None


class StageRecord(_Open):
    """What one pass left: its model's size and speed against the original."""


class JobResult(_Open):
    metrics: Metrics | None = None
    notes: list[str] | None = None
    passes: list[PassRecord] | None = None
    stages: list[StageRecord] | None = None
    source: dict[str, Any] | None = None


class JobSummary(BaseModel):
    """The numbers a comparison table needs, from a succeeded job's result."""

    size_ratio: float
    speedup_p50: dict[str, float]
    speedup_interval: dict[str, list[float]]
    metric: str | None
    drop: float | None
    max_drop: float | None
    within_tolerance: bool | None
    slower_than_baseline: bool
    verdict: str

    @classmethod
    def of(cls, result: dict[str, Any] | None) -> JobSummary | None:
        metrics = (result or {}).get("metrics")
        comparison = metrics.get("comparison") if isinstance(metrics, dict) else None
        if not isinstance(comparison, dict) or "size_ratio" not in comparison:
            return None
        try:
            return cls._of(comparison)
        except ValueError:  # a shape an older worker wrote: the job is listed without one
            return None

    @classmethod
    def _of(cls, comparison: dict[str, Any]) -> JobSummary:
        return cls(
            size_ratio=comparison["size_ratio"],
            speedup_p50=comparison.get("speedup_p50") or {},
            speedup_interval=comparison.get("speedup_interval") or {},
            metric=comparison.get("metric"),
            drop=comparison.get("drop"),
            max_drop=comparison.get("max_drop"),
            within_tolerance=comparison.get("within_tolerance"),
            slower_than_baseline=bool(comparison.get("slower_than_baseline")),
            verdict=comparison.get("verdict") or "",
        )


def typed_result(result: dict[str, Any] | None) -> JobResult | None:
    """A stored result as its typed shape; one an older worker wrote in another shape is
    served as it is stored rather than refused."""
    if result is None:
        return None
    try:
        return JobResult.model_validate(result)
    except ValueError:
        # Kept whole, under a name of its own, rather than lost or answered with a 500.
        return JobResult.model_validate({"unparsed": result})
