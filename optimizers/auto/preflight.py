"""Placeholder preflight (replaced by the search policy)."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from optimizers.config import PipelineSpec
from optimizers.results import DatasetInfo, ModelInfo


@dataclass(frozen=True)
class Preflight:
    structure: str
    facts: dict[str, Any] = field(default_factory=dict)
    applicable: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Preflight:
        return cls(**dict(data))


def preflight(
    model: ModelInfo,
    datasets: Mapping[str, DatasetInfo],
    spec: PipelineSpec,
    *,
    live_queues: Collection[str],
) -> Preflight:
    ops = model.op_types or {}
    structure = "transformer" if "Softmax" in ops else "cnn" if "Conv" in ops else "mlp"
    return Preflight(structure=structure, facts={"opset": model.opset})
