"""The answer of an auto search: the best model its trials found, the trade-offs measured,
and why every other family lost, in words made from the measured numbers.

Objectives (see optimizers.auto.measured.score): `latency` ranks by the speed-up at the
search's batch size, `size` by the smallest file (lowest size ratio), `balanced` by speed-up
divided by size ratio. Only rung-1 trials (fully measured) can be the answer, and only when
they are within the tolerance AND faster than the original by the whole paired interval at
that batch size; otherwise the graph-optimized original when it is within the tolerance and
not slower, otherwise the original itself. Never a slower or out-of-tolerance model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from optimizers.auto.candidates import candidates_for, graph_fallback
from optimizers.auto.families import label
from optimizers.auto.measured import Measured, measured, rank_key
from optimizers.auto.preflight import Preflight, auto_config
from optimizers.auto.search import TrialOutcome
from optimizers.config import AutoConfig, PipelineSpec

_WEIGHT_ONLY = frozenset({"int4_weight_only", "int8_weight_only"})


def answer(
    spec: PipelineSpec,
    pre: Preflight,
    outcomes: Sequence[TrialOutcome],
    *,
    cut_short: bool = False,
) -> dict[str, Any]:
    """The search's answer as JSON (docs/auto.md, "The answer"). `cut_short`: the search
    was stopped (minutes spent, canceled) before its full measurements; then, when no rung-1
    trial qualifies, a screened (rung-0) trial that qualifies by the same rule is the answer
    before the graph fallback, and `screened_only` says so."""
    config = auto_config(spec)
    batch = int(pre.facts["batch_size"])
    numbers = {
        outcome.key: measured(outcome.result, batch_size=batch, max_drop=config.max_drop)
        if outcome.status == "succeeded"
        else None
        for outcome in outcomes
    }
    full = [(o, n) for o in outcomes if o.rung >= 1 and (n := numbers[o.key]) is not None]
    best = _best(config, full)
    screened_only = False
    if best is None and cut_short:
        screened = [(o, n) for o in outcomes if o.rung == 0 and (n := numbers[o.key]) is not None]
        best = _best(config, screened)
        screened_only = best is not None
    fallback: str | None = None
    if best is None:
        graph = next((o for o, n in full if o.family == "graph" and _acceptable(n)), None)
        best, fallback = (graph, "graph") if graph is not None else (None, "original")
    best_numbers = numbers[best.key] if best is not None else None
    return {
        "best": best.key if best is not None else None,
        "best_job_id": best.job_id if best is not None else None,
        "fallback": fallback,
        "original": best is None,
        "screened_only": screened_only,
        "objective": config.objective,
        "batch_size": batch,
        "message": _message(config, batch, best, best_numbers, fallback)
        + (
            " (screened only: the search stopped before its full measurement)"
            if screened_only
            else ""
        ),
        "pareto": _pareto(full),
        "rejected": _rejected(config, pre, batch, outcomes, numbers, best, fallback),
        "skipped": dict(pre.skipped),
        "trials": [_trial_entry(spec, pre, o, numbers[o.key]) for o in outcomes],
    }


def _best(
    config: AutoConfig, measured_trials: Sequence[tuple[TrialOutcome, Measured]]
) -> TrialOutcome | None:
    qualified = [(o, n) for o, n in measured_trials if _qualifies(n)]
    if not qualified:
        return None
    return min(qualified, key=lambda pair: rank_key(config.objective, pair[1], pair[0].key))[0]


def _qualifies(numbers: Measured) -> bool:
    return numbers.within_tolerance and numbers.clearly_faster


def _acceptable(numbers: Measured) -> bool:
    return numbers.within_tolerance and not numbers.clearly_slower


def _times(value: float) -> str:
    return f"{value:.2f}x"


def _drop(value: float) -> str:
    """At most two significant digits, never in exponent form: 0.034, 0.0021, 0.02, 0."""
    if value == 0:
        return "0"
    digits = max(2, 1 - math.floor(math.log10(abs(value))))
    return f"{value:.{digits}f}".rstrip("0").rstrip(".")


def _size(size_ratio: float) -> str:
    if size_ratio <= 0.995:
        return f"{1.0 / max(size_ratio, 1e-6):.1f}x smaller"
    if size_ratio < 1.005:
        return "the same size"
    return f"{size_ratio:.2f}x the original size"


def _nodes(count: int) -> str:
    return f"{count} node{'s' if count != 1 else ''}"


def _named(family: str, numbers: Measured | None) -> str:
    """The family as the user reads it; a mixed-precision trial says how much it kept."""
    if numbers is not None and numbers.kept_float is not None:
        return f"{label(family)} ({_nodes(numbers.kept_float)} kept in float)"
    return label(family)


def _numbers_text(numbers: Measured, batch: int) -> str:
    return (
        f"{_times(numbers.speedup)} faster at batch {batch} (interval "
        f"{numbers.low:.2f}-{numbers.high:.2f}), {numbers.metric} drop {_drop(numbers.drop)} "
        f"(limit {numbers.max_drop:g}), {_size(numbers.size_ratio)}"
    )


def _brief(numbers: Measured, batch: int) -> str:
    return (
        f"{_times(numbers.speedup)} at batch {batch}, drop {_drop(numbers.drop)}, "
        f"{_size(numbers.size_ratio)}"
    )


def _message(
    config: AutoConfig,
    batch: int,
    best: TrialOutcome | None,
    numbers: Measured | None,
    fallback: str | None,
) -> str:
    if best is not None and numbers is not None and fallback is None:
        return f"{_named(best.family, numbers)}: {_numbers_text(numbers, batch)}"
    nothing = (
        f"no trial was both within the tolerance ({config.max_drop:g}) and faster than the "
        f"original by the paired interval at batch {batch}"
    )
    if best is not None and numbers is not None:
        return (
            f"{nothing}; the answer is the graph-optimized original: "
            f"{_times(numbers.speedup)} at batch {batch}, {numbers.metric} drop "
            f"{_drop(numbers.drop)}, {_size(numbers.size_ratio)}"
        )
    return f"{nothing}; the answer is the original model, unchanged"


def _pareto(full: Sequence[tuple[TrialOutcome, Measured]]) -> list[str]:
    """Rung-1 trials that are within the tolerance and not slower, and that no other such
    trial beats on speed, size and drop at once."""
    points = {o.key: (-n.speedup, n.size_ratio, n.drop) for o, n in full if _acceptable(n)}

    def dominated(key: str) -> bool:
        mine = points[key]
        return any(
            other != key
            and all(a <= b for a, b in zip(theirs, mine, strict=True))
            and theirs != mine
            for other, theirs in points.items()
        )

    return [key for key in points if not dominated(key)]


def _rejected(
    config: AutoConfig,
    pre: Preflight,
    batch: int,
    outcomes: Sequence[TrialOutcome],
    numbers: dict[str, Measured | None],
    best: TrialOutcome | None,
    fallback: str | None,
) -> dict[str, str]:
    """For every family tried other than the answer's: why it lost, from its best trial."""
    families: dict[str, list[TrialOutcome]] = {}
    for outcome in outcomes:
        families.setdefault(outcome.family, []).append(outcome)
    reasons: dict[str, str] = {}
    for family, tried in families.items():
        if best is not None and family == best.family:
            continue
        reasons[family] = _family_reason(
            config, pre, batch, family, tried, numbers, None if fallback else best
        )
    return reasons


def _representative(
    config: AutoConfig, tried: Sequence[TrialOutcome], numbers: dict[str, Measured | None]
) -> TrialOutcome | None:
    """The family's most telling measured trial: fully measured before screened, qualified
    before not, then the best by the objective."""
    pairs = [(o, n) for o in tried if (n := numbers[o.key]) is not None]
    if not pairs:
        return None
    return min(
        pairs,
        key=lambda pair: (
            -pair[0].rung,
            not _qualifies(pair[1]),
            not _acceptable(pair[1]),
            rank_key(config.objective, pair[1], pair[0].key),
        ),
    )[0]


def _family_reason(
    config: AutoConfig,
    pre: Preflight,
    batch: int,
    family: str,
    tried: Sequence[TrialOutcome],
    numbers: dict[str, Measured | None],
    winner: TrialOutcome | None,
) -> str:
    name = label(family)
    outcome = _representative(config, tried, numbers)
    if outcome is None:
        failed = [o for o in tried if o.status == "failed"]
        if failed:
            return f"failed: {failed[0].error or 'no error was recorded'}"
        if any(o.status == "canceled" for o in tried):
            return "canceled before it was measured"
        return "not finished when the search ended"
    n = numbers[outcome.key]
    assert n is not None
    at = f"{_times(n.speedup)} at batch {batch} (interval {n.low:.2f}-{n.high:.2f})"
    if n.clearly_slower:
        return f"{name} is slower here: {at}{_slower_cause(family, pre)}"
    kept = f"{name} kept {_nodes(n.kept_float)} in float and " if n.kept_float is not None else ""
    if not n.within_tolerance:
        nodes = (
            f": most sensitive nodes {', '.join(n.sensitive_nodes[:3])}"
            if n.sensitive_nodes
            else ""
        )
        if kept:
            return f"{kept}still dropped {_drop(n.drop)} (limit {n.max_drop:g}){nodes}"
        return f"{name} dropped {_drop(n.drop)} (limit {n.max_drop:g}){nodes}"
    if not n.clearly_faster:
        return f"{name} is not measurably faster: {at}; the interval of the paired runs includes 1"
    if outcome.rung == 0:
        return (
            f"{name} was screened at {at} with a drop of {_drop(n.drop)} and not measured "
            f"in full: other candidates ranked higher for objective '{config.objective}'"
        )
    winning = numbers[winner.key] if winner is not None else None
    if winner is not None and winning is not None:
        qualified = f"{kept}dropped {_drop(n.drop)}: qualified" if kept else f"{name} qualified"
        return (
            f"{qualified} ({_brief(n, batch)}), but {_named(winner.family, winning)} ranks "
            f"higher for objective '{config.objective}' ({_brief(winning, batch)})"
        )
    return f"{name}: {_numbers_text(n, batch)}"


def _slower_cause(family: str, pre: Preflight) -> str:
    parts = set(family.split("+"))
    on_cpu = pre.facts.get("device") != "cuda"
    op_types = pre.facts.get("op_types") or {}
    if on_cpu and "int8_dynamic" in parts and (op_types.get("Conv") or pre.structure == "cnn"):
        return "; the convolutions do not run as quantized kernels on this CPU"
    if parts & _WEIGHT_ONLY:
        return (
            "; weight-only formats dequantize their weights on every run, which saves bytes, "
            "not time"
        )
    return ""


def _trial_entry(
    spec: PipelineSpec, pre: Preflight, outcome: TrialOutcome, numbers: Measured | None
) -> dict[str, Any]:
    return {
        "key": outcome.key,
        "family": outcome.family,
        "rung": outcome.rung,
        "status": outcome.status,
        "job_id": outcome.job_id,
        "why": outcome.why or _why(spec, pre, outcome),
        "speedup": numbers.speedup if numbers else None,
        "interval": [numbers.low, numbers.high] if numbers else None,
        "size_ratio": numbers.size_ratio if numbers else None,
        "drop": numbers.drop if numbers else None,
        "within_tolerance": numbers.within_tolerance if numbers else None,
        "verdict": numbers.verdict if numbers else None,
        "error": outcome.error,
    }


def _why(spec: PipelineSpec, pre: Preflight, outcome: TrialOutcome) -> str:
    """The plan's sentence for an outcome the caller did not keep it for."""
    stem = outcome.key.rsplit("-r", 1)[0]
    others = candidates_for(
        auto_config(spec), structure=pre.structure, samples=int(pre.facts["samples"])
    )
    for candidate in [graph_fallback(), *others]:
        if candidate.stem == stem:
            return candidate.why
    if outcome.family == "mixed":
        return (
            "An int8 recipe that dropped too much, again with its most sensitive nodes kept "
            "in float."
        )
    return f"{label(outcome.family)}, built from the screened results."
