"""Mixed-precision refinements of an auto search: the fastest int8 recipe that dropped a little
too much is run again with the quantize pass's own per-node loop (`scope: mixed`, see
optimizers/quantization/mixed.py), which keeps its most sensitive nodes in float until the
drop measured on the search's dataset is within `mixed.max_drop`; a refinement still over the
tolerance is followed by one with a tighter `mixed.max_drop`, so more nodes stay float.

Keys: `mixed-<recipe>-r1` for the first refinement of a recipe, `mixed-<recipe>-g<n>-r1` for
the n-th. Pure and deterministic, like the rest of the search policy.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from optimizers.auto.candidates import trial_key
from optimizers.auto.families import INT8_FAMILIES, label
from optimizers.auto.measured import FINAL_STATUSES, Measured, mixed_report, rank_key, score

#: The first refinement's `mixed.max_drop`, as a share of the search's tolerance: the loop
#: measures on the search's dataset (a subset of it), the trial on the held-out data, so it
#: aims below the limit for the full evaluation to land within it.
MIXED_MARGIN = 0.8
#: Each further refinement asks for at most this share of the previous one's measured drop.
TIGHTEN = 0.5
#: Refinements of one recipe, at most (the first included).
MIXED_GENERATIONS = 4
#: A recipe is refined when its drop is within this multiple of the tolerance: further out,
#: so many nodes would stay float that little of the speed-up would be left.
REFINE_DROP_FACTOR = 2.0
#: When nothing else is left to run, recipes this far out are refined too.
IDLE_DROP_FACTOR = 3.0
#: Samples the loop measures each round on (a drop of 1 sample in 64 is already 0.016).
MIXED_SAMPLES = 512
MIXED_MAX_ROUNDS = 8

_KEY = re.compile(r"^mixed-(?P<source>.+?)(?:-g(?P<generation>\d+))?$")


@dataclass(frozen=True)
class MixedPlan:
    """What search.py turns into a TrialPlan (family `mixed`, rung 1)."""

    key: str
    passes: list[dict[str, Any]]
    why: str


@dataclass(frozen=True)
class Settings:
    """The search's side of a refinement."""

    max_drop: float
    metric: str
    dataset_id: str
    samples: int
    objective: str


def stem(key: str) -> str:
    return key.rsplit("-r", 1)[0]


def chain_of(key: str) -> tuple[str, int] | None:
    """(the refined recipe's stem, the generation) of a refinement's key, else None."""
    found = _KEY.match(stem(key))
    if found is None:
        return None
    return found["source"], int(found["generation"] or 1)


def quantize_method(passes: Sequence[Mapping[str, Any]]) -> str | None:
    """`dynamic` or `static` when the recipe ends with an int8 quantize pass."""
    if not passes:
        return None
    last = passes[-1]
    if last.get("kind") != "quantize" or last.get("method") not in ("dynamic", "static"):
        return None
    return str(last["method"])


def _is_int8_recipe(family: str, passes: Sequence[Mapping[str, Any]]) -> bool:
    return family.split("+")[-1] in INT8_FAMILIES and quantize_method(passes) is not None


def mixed_passes(
    passes: Sequence[Mapping[str, Any]], settings: Settings, *, max_drop: float
) -> list[dict[str, Any]]:
    """The recipe with its last (int8) quantize pass in scope `mixed`: same method, scales,
    calibration and preset; `per_node` and a selection are the loop's to choose."""
    out = [copy.deepcopy(dict(config)) for config in passes]
    last = {
        key: value
        for key, value in out[-1].items()
        if key not in ("scope", "include", "exclude", "per_node", "mixed")
    }
    last["scope"] = "mixed"
    last["mixed"] = {
        "max_drop": max_drop,
        "metric": settings.metric,
        "dataset_id": settings.dataset_id,
        "samples": settings.samples,
        "max_rounds": MIXED_MAX_ROUNDS,
        "fallback": "fp32",
    }
    out[-1] = last
    return out


def best_qualified_score(
    settings: Settings, outcomes: Sequence[Any], numbers_of: Callable[[Any], Measured | None]
) -> float:
    """The objective's score of the best fully measured trial that qualifies (0 when none):
    keeping nodes in float only makes a recipe slower and larger, so a refinement of a recipe
    that does not score above it cannot become the answer."""
    scores = [
        score(settings.objective, numbers)
        for outcome in outcomes
        if outcome.rung >= 1
        and (numbers := numbers_of(outcome)) is not None
        and numbers.within_tolerance
        and numbers.clearly_faster
    ]
    return max(scores, default=0.0)


def first_refinements(
    settings: Settings,
    outcomes: Sequence[Any],
    numbers_of: Callable[[Any], Measured | None],
    *,
    planned: Sequence[Any] = (),
    idle: bool = False,
) -> list[MixedPlan]:
    """For int8 dynamic and int8 static each: when the best recipe (by the objective, among
    those faster than the original and within twice the tolerance; its full measurement when
    it has one) dropped more than the tolerance, that recipe in scope `mixed`. Waits while a
    recipe of that method is still being measured in full, or is about to be (`planned`:
    trials starting now). `idle` (nothing else is left to run): the best recipe of each
    method not refined yet, within IDLE_DROP_FACTOR times the tolerance. Never a recipe that
    does not score above the best qualified trial."""
    started = {outcome.key for outcome in outcomes}
    waiting: set[str] = {
        method
        for plan in planned
        if plan.key not in started
        and plan.family != "mixed"
        and _is_int8_recipe(plan.family, plan.spec.get("passes") or [])
        and (method := quantize_method(plan.spec["passes"])) is not None
    }
    by_stem: dict[str, list[Any]] = {}
    for outcome in outcomes:
        if outcome.family == "mixed" or not _is_int8_recipe(
            outcome.family, outcome.spec.get("passes") or []
        ):
            continue
        by_stem.setdefault(stem(outcome.key), []).append(outcome)
    factor = IDLE_DROP_FACTOR if idle else REFINE_DROP_FACTOR
    ranked: dict[str, list[tuple[Any, Measured]]] = {}
    for tried in by_stem.values():
        latest = max(tried, key=lambda o: o.rung)
        method = quantize_method(latest.spec["passes"])
        assert method is not None
        if latest.status not in FINAL_STATUSES:
            waiting.add(method)
            continue
        numbers = numbers_of(latest)
        if numbers is None or not numbers.clearly_faster:
            continue
        if numbers.drop > factor * settings.max_drop:
            continue
        ranked.setdefault(method, []).append((latest, numbers))
    bar = best_qualified_score(settings, outcomes, numbers_of)
    plans = []
    for method in ("dynamic", "static"):
        if method in waiting or method not in ranked:
            continue
        found = sorted(ranked[method], key=lambda p: rank_key(settings.objective, p[1], p[0].key))
        if idle:
            found = [
                (source, numbers)
                for source, numbers in found
                if not numbers.within_tolerance
                and trial_key(f"mixed-{stem(source.key)}", 1) not in started
            ]
        if not found:
            continue
        source, numbers = found[0]
        if numbers.within_tolerance or score(settings.objective, numbers) <= bar:
            continue
        target = round(MIXED_MARGIN * settings.max_drop, 6)
        plans.append(
            MixedPlan(
                key=trial_key(f"mixed-{stem(source.key)}", 1),
                passes=mixed_passes(source.spec["passes"], settings, max_drop=target),
                why=f"{label(source.family)} ({stem(source.key)}) dropped "
                f"{numbers.drop:.2g} (limit {settings.max_drop:g}) at {numbers.speedup:.2f}x: "
                f"the same recipe with scope 'mixed', which keeps its most sensitive nodes in "
                f"float until the {settings.metric} drop on the search's dataset is within "
                f"{target:g}.",
            )
        )
    return plans


def further_refinements(
    settings: Settings,
    outcomes: Sequence[Any],
    numbers_of: Callable[[Any], Measured | None],
) -> list[MixedPlan]:
    """For every refinement still over the tolerance: the next one, asking the loop for a
    drop below what it measured (so it must keep more nodes in float). None when the last one
    is within the tolerance, not faster than the original, failed, the loop could not reach
    its own target, or measured no drop at all on the search's dataset (then nothing the
    loop can do changes the model), or after MIXED_GENERATIONS."""
    latest: dict[str, tuple[int, Any]] = {}
    for outcome in outcomes:
        chain = chain_of(outcome.key) if outcome.family == "mixed" else None
        if chain is None:
            continue
        source, generation = chain
        if source not in latest or generation > latest[source][0]:
            latest[source] = (generation, outcome)
    bar = best_qualified_score(settings, outcomes, numbers_of)
    plans = []
    for source, (generation, outcome) in sorted(latest.items()):
        if generation >= MIXED_GENERATIONS or outcome.status != "succeeded":
            continue
        numbers = numbers_of(outcome)
        report = mixed_report(outcome.result)
        if numbers is None or report is None or numbers.within_tolerance:
            continue
        if not numbers.clearly_faster or not report.met or report.drop <= 0:
            continue
        if score(settings.objective, numbers) <= bar:
            continue
        target = round(min(report.max_drop, report.drop) * TIGHTEN, 6)
        if target <= 0:
            continue
        kept = len(report.kept_float)
        plans.append(
            MixedPlan(
                key=trial_key(f"mixed-{source}-g{generation + 1}", 1),
                passes=mixed_passes(outcome.spec["passes"], settings, max_drop=target),
                why=f"mixed precision of {source} kept {kept} node{'s' if kept != 1 else ''} "
                f"in float and still dropped {numbers.drop:.2g} (limit "
                f"{settings.max_drop:g}; {report.drop:.2g} on the search's dataset): again "
                f"with mixed.max_drop {target:g}, so more nodes stay in float.",
            )
        )
    return plans
