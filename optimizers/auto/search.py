"""Placeholder search (replaced by the search policy)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from optimizers.auto.preflight import Preflight
from optimizers.config import AutoConfig, PipelineSpec


@dataclass(frozen=True)
class TrialPlan:
    key: str
    family: str
    rung: int
    spec: dict[str, Any]
    why: str


@dataclass(frozen=True)
class TrialOutcome:
    key: str
    family: str
    rung: int
    spec: dict[str, Any]
    job_id: str
    status: str
    result: dict[str, Any] | None
    error: str | None


def next_trials(
    spec: PipelineSpec, pre: Preflight, outcomes: Sequence[TrialOutcome], *, budget_left: int
) -> list[TrialPlan]:
    config = spec.passes[0]
    assert isinstance(config, AutoConfig)
    measure = {
        "evaluate": {"dataset_id": config.dataset_id, "max_drop": config.max_drop},
        "benchmark": {"batch_sizes": [config.batch_size], "warmup": 3, "iterations": 20},
    }
    plans = [
        TrialPlan("graph@1", "graph", 1, {"passes": [{"kind": "graph_optimize"}], **measure}, "fallback"),
        TrialPlan("int8-dynamic@1", "int8_dynamic", 1, {"passes": [{"kind": "quantize", "method": "dynamic"}], **measure}, "int8"),
        TrialPlan("int8-dynamic-pc@1", "int8_dynamic", 1, {"passes": [{"kind": "quantize", "method": "dynamic", "per_channel": True}], **measure}, "int8"),
    ]
    seen = {o.key for o in outcomes}
    return [p for p in plans if p.key not in seen][:budget_left]
