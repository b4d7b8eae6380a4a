"""Placeholder answer (replaced by the search policy)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from optimizers.auto.preflight import Preflight
from optimizers.auto.search import TrialOutcome
from optimizers.config import AutoConfig, PipelineSpec


def answer(spec: PipelineSpec, pre: Preflight, outcomes: Sequence[TrialOutcome]) -> dict[str, Any]:
    config = spec.passes[0]
    assert isinstance(config, AutoConfig)
    batch = str(config.batch_size)
    rows = []
    best = None
    for o in outcomes:
        c = (o.result or {}).get("comparison") or {}
        interval = (c.get("speedup_interval") or {}).get(batch)
        speed = (c.get("speedup_p50") or {}).get(batch)
        rows.append({"key": o.key, "family": o.family, "rung": o.rung, "status": o.status, "job_id": o.job_id, "why": "", "speedup": speed, "interval": interval, "size_ratio": c.get("size_ratio"), "drop": c.get("drop"), "within_tolerance": c.get("within_tolerance"), "verdict": c.get("verdict"), "error": o.error, "cached": False})
        if o.status == "succeeded" and c.get("within_tolerance") and interval and interval[0] > 1 and (best is None or speed > best[1]):
            best = (o, speed)
    return {
        "best": best[0].key if best else None,
        "best_job_id": best[0].job_id if best else None,
        "fallback": None if best else "original",
        "message": f"{best[0].key}: {best[1]}x" if best else "nothing qualified: the original",
        "pareto": [], "rejected": {}, "trials": rows,
    }
