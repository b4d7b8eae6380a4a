"""The rows of `modelpress compare`: each finished job's summary, best first."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from modelpress.models import Job


@dataclass
class Row:
    job: Job

    @property
    def summary(self) -> Any:
        return self.job.summary

    @property
    def slower(self) -> bool:
        return bool(self.summary and self.summary.slower_than_baseline)

    @property
    def outside_tolerance(self) -> bool:
        return bool(self.summary and self.summary.within_tolerance is False)

    @property
    def failing(self) -> bool:
        """What `--fail-on-slower` fails on."""
        return self.slower or self.outside_tolerance

    def mean_speedup(self) -> float:
        speedups = list(self.summary.speedup_p50.values()) if self.summary else []
        return sum(speedups) / len(speedups) if speedups else 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "job_id": self.job.id,
            "status": self.job.status,
            "labels": self.job.labels,
            "summary": self.summary.model_dump() if self.summary else None,
            "slower": self.slower,
            "outside_tolerance": self.outside_tolerance,
        }


def rank(jobs: list[Job]) -> list[Row]:
    """Succeeded jobs first, within them: not slower, within tolerance, then the largest mean
    speedup, then the smallest size; unfinished or failed jobs last."""
    rows = [Row(job) for job in jobs]

    def key(row: Row) -> tuple[bool, bool, bool, float, float]:
        summary = row.summary
        return (
            summary is None,
            row.slower,
            row.outside_tolerance,
            -row.mean_speedup(),
            summary.size_ratio if summary else 1e9,
        )

    return sorted(rows, key=key)


def describe(job: Job) -> str:
    """What tells a job apart in a table: its labels, else its passes."""
    if job.labels:
        return ", ".join(f"{k.split('.')[-1]}={v}" for k, v in job.labels.items())
    passes = job.spec.get("passes") or []
    return " + ".join(_pass_name(p) for p in passes)


def _pass_name(spec: dict[str, Any]) -> str:
    if spec.get("kind") == "auto":
        return f"auto search for {spec.get('objective') or 'latency'}"
    return "/".join(str(spec.get(k)) for k in ("kind", "method") if spec.get(k))
