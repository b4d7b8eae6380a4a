"""The order of an auto search: successive halving over the preflight's candidates.

Rung 0 screens every candidate the budget allows with a short benchmark and an evaluation on
a subset; once all of them are final, the best third (by the objective, among those within
the tolerance or within twice it) is measured in full at rung 1, together with refinements
made from the measured results: pruning followed by int8, and mixed precision for the best
int8 dynamic and static recipes that dropped too much (optimizers/auto/refine.py: the
quantize pass's own per-node loop keeps their most sensitive nodes in float), refined again
while they stay over the tolerance. When all of that is over and the budget is not spent,
the next-best screened trials are measured in full too. The graph-optimized original always
runs at rung 1: it is the fallback answer. Pure and deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from optimizers.auto.candidates import (
    Candidate,
    candidates_for,
    graph_fallback,
    trial_key,
    trial_spec,
)
from optimizers.auto.families import INT8_FAMILIES, SHRINK_FAMILIES, label
from optimizers.auto.measured import FINAL_STATUSES, Measured, measured, rank_key, score
from optimizers.auto.preflight import Preflight, auto_config
from optimizers.auto.refine import (
    MIXED_SAMPLES,
    Settings,
    best_qualified_score,
    first_refinements,
    further_refinements,
)
from optimizers.config import AutoConfig, PipelineSpec

#: A screened trial is worth the full measurement within this multiple of the tolerance:
#: a subset's drop is a noisy estimate, and mixed precision can win the rest back.
PROMOTE_DROP_FACTOR = 2.0
#: Budgets this small skip screening: the graph fallback and the first candidates run in full.
DIRECT_BUDGET = 3
#: Trials kept for refinements when the budget can spare them.
REFINEMENT_RESERVE = 2


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
    #: The plan's sentence, where the caller kept it (answer() rebuilds it otherwise).
    why: str | None = None


@dataclass(frozen=True)
class _Context:
    spec: PipelineSpec
    config: AutoConfig
    pre: Preflight

    @property
    def batch_size(self) -> int:
        return int(self.pre.facts["batch_size"])

    def plan(
        self, key: str, family: str, rung: int, passes: list[dict[str, Any]], why: str
    ) -> TrialPlan:
        return TrialPlan(
            key=key,
            family=family,
            rung=rung,
            spec=trial_spec(
                self.spec,
                self.config,
                passes,
                rung=rung,
                batch_size=self.batch_size,
                samples=int(self.pre.facts["samples"]),
                metric=str(self.pre.facts["metric"]),
            ),
            why=why,
        )

    def numbers(self, outcome: TrialOutcome) -> Measured | None:
        if outcome.status != "succeeded":
            return None
        return measured(outcome.result, batch_size=self.batch_size, max_drop=self.config.max_drop)


def screening_pool(spec: PipelineSpec, pre: Preflight) -> list[Candidate]:
    """The candidates the preflight allows, most promising first."""
    config = auto_config(spec)
    refused = pre.facts.get("refused") or {}
    return [
        candidate
        for candidate in candidates_for(
            config, structure=pre.structure, samples=int(pre.facts["samples"])
        )
        if candidate.family in pre.applicable and candidate.stem not in refused
    ]


def screened_count(pool_size: int, trials: int) -> int:
    """How many candidates rung 0 screens with a budget of `trials`: as many as leave room for
    the graph fallback, the promotions (a third of them, at least 2) and, with 12 trials or
    more, the refinements. 0: the budget is too small for screening to drop anything, so the
    first candidates are measured in full at once."""
    if trials <= DIRECT_BUDGET:
        return 0
    reserve = REFINEMENT_RESERVE if trials >= 12 else 0
    for count in range(pool_size, 0, -1):
        if 1 + count + promoted_count(count) + reserve <= trials:
            return count if count > promoted_count(count) else 0
    return 0


def promoted_count(screened: int) -> int:
    return min(screened, max(2, math.ceil(screened / 3)))


def next_trials(
    spec: PipelineSpec,
    pre: Preflight,
    outcomes: Sequence[TrialOutcome],
    *,
    budget_left: int,
) -> list[TrialPlan]:
    """The trials to start now, in order (see the module docstring); never a key that is in
    `outcomes`, at most `budget_left`. [] when nothing new can start yet (trials are still
    running) or the search is over."""
    if budget_left <= 0:
        return []
    ctx = _Context(spec=spec, config=auto_config(spec), pre=pre)
    pool = screening_pool(spec, pre)
    fallback = graph_fallback()
    wanted = [
        ctx.plan(
            trial_key(fallback.stem, 1), fallback.family, 1, fallback.pass_list(), fallback.why
        )
    ]
    screened = screened_count(len(pool), ctx.config.budget.trials)
    screened_outcomes: list[TrialOutcome] = []
    if screened == 0:
        direct = pool[: max(0, ctx.config.budget.trials - 1)]
        wanted += [_full(ctx, candidate) for candidate in direct]
        wanted += _mixed_refinements(ctx, outcomes, wanted)
    else:
        rung0 = [
            ctx.plan(trial_key(c.stem, 0), c.family, 0, c.pass_list(), c.why)
            for c in pool[:screened]
        ]
        wanted += rung0
        by_key = {outcome.key: outcome for outcome in outcomes}
        done = all(
            plan.key in by_key and by_key[plan.key].status in FINAL_STATUSES for plan in rung0
        )
        if done:
            screened_outcomes = [by_key[plan.key] for plan in rung0]
            wanted += _promotions(ctx, pool, screened_outcomes, screened=screened)
            wanted += _combinations(ctx, pool, screened_outcomes)
            # After the screening only: a refinement must not take a promotion's place.
            wanted += _mixed_refinements(ctx, outcomes, wanted)
    seen = {outcome.key for outcome in outcomes}
    fresh: list[TrialPlan] = []
    for plan in wanted:
        if plan.key not in seen:
            seen.add(plan.key)
            fresh.append(plan)
    idle = all(outcome.status in FINAL_STATUSES for outcome in outcomes)
    if not fresh and idle and screened_outcomes:
        # Every rung-1 trial and refinement is over and the budget is not spent.
        fresh = _more_promotions(ctx, pool, outcomes, screened_outcomes, seen, screened=screened)
    if not fresh and idle:
        found = first_refinements(_settings(ctx), outcomes, ctx.numbers, idle=True)
        fresh = [ctx.plan(plan.key, "mixed", 1, plan.passes, plan.why) for plan in found]
    return fresh[:budget_left]


def _full(ctx: _Context, candidate: Candidate) -> TrialPlan:
    return ctx.plan(
        trial_key(candidate.stem, 1), candidate.family, 1, candidate.pass_list(), candidate.why
    )


def _stem(key: str) -> str:
    return key.rsplit("-r", 1)[0]


def promising(
    ctx: _Context, outcomes: Sequence[TrialOutcome]
) -> list[tuple[TrialOutcome, Measured]]:
    """Screened trials worth the full measurement, best first: succeeded, not slower than the
    original by the whole paired interval, and a drop within twice the tolerance; those
    within the tolerance rank before the others."""
    found = []
    for outcome in outcomes:
        numbers = ctx.numbers(outcome)
        if numbers is None or numbers.clearly_slower:
            continue
        if numbers.drop > PROMOTE_DROP_FACTOR * ctx.config.max_drop:
            continue
        found.append((outcome, numbers))
    objective = ctx.config.objective
    found.sort(
        key=lambda pair: (not pair[1].within_tolerance, *rank_key(objective, pair[1], pair[0].key))
    )
    return found


def _promotions(
    ctx: _Context, pool: list[Candidate], outcomes: Sequence[TrialOutcome], *, screened: int
) -> list[TrialPlan]:
    candidates = {candidate.stem: candidate for candidate in pool}
    best = promising(ctx, outcomes)[: promoted_count(screened)]
    plans = []
    for outcome, numbers in best:
        candidate = candidates[_stem(outcome.key)]
        plans.append(
            ctx.plan(
                trial_key(candidate.stem, 1),
                candidate.family,
                1,
                candidate.pass_list(),
                f"{candidate.why} Screened at {numbers.speedup:.2f}x with a drop of "
                f"{numbers.drop:.2g}: measured in full.",
            )
        )
    return plans


def _combinations(
    ctx: _Context, pool: list[Candidate], outcomes: Sequence[TrialOutcome]
) -> list[TrialPlan]:
    """Pruning (or distillation) then int8, when both screened within the tolerance and not
    slower: their savings add up."""
    ranked = promising(ctx, outcomes)
    fine = [(o, m) for o, m in ranked if m.within_tolerance]
    shrink = [(o, m) for o, m in fine if o.family in SHRINK_FAMILIES]
    int8 = [(o, m) for o, m in fine if o.family in INT8_FAMILIES and len(o.spec["passes"]) == 1]
    if not shrink or not int8:
        return []
    (small, small_numbers), (fast, fast_numbers) = shrink[0], int8[0]
    passes = [*small.spec["passes"], *fast.spec["passes"]]
    return [
        ctx.plan(
            trial_key(f"{_stem(small.key)}-{_stem(fast.key)}", 1),
            f"{small.family}+{fast.family}",
            1,
            [dict(config) for config in passes],
            f"{label(small.family)} (screened drop {small_numbers.drop:.2g}) then "
            f"{label(fast.family)} (screened {fast_numbers.speedup:.2f}x): both within the "
            "tolerance, so their savings may add up.",
        )
    ]


def _settings(ctx: _Context) -> Settings:
    samples = ctx.pre.facts.get("dataset_samples") or ctx.pre.facts["samples"]
    return Settings(
        max_drop=ctx.config.max_drop,
        metric=str(ctx.pre.facts["metric"]),
        dataset_id=ctx.config.dataset_id,
        samples=min(MIXED_SAMPLES, int(samples)),
        objective=ctx.config.objective,
    )


def _mixed_refinements(
    ctx: _Context, outcomes: Sequence[TrialOutcome], planned: Sequence[TrialPlan]
) -> list[TrialPlan]:
    """Mixed precision for the best int8 recipes over the tolerance, once they are measured
    as fully as they will be, then further refinements of those still over it
    (optimizers/auto/refine.py)."""
    settings = _settings(ctx)
    found = first_refinements(settings, outcomes, ctx.numbers, planned=planned)
    found += further_refinements(settings, outcomes, ctx.numbers)
    return [ctx.plan(plan.key, "mixed", 1, plan.passes, plan.why) for plan in found]


def _more_promotions(
    ctx: _Context,
    pool: list[Candidate],
    outcomes: Sequence[TrialOutcome],
    screened_outcomes: Sequence[TrialOutcome],
    seen: set[str],
    *,
    screened: int,
) -> list[TrialPlan]:
    """When nothing else is left to run: the next-best screened trials, measured in full;
    only those whose screening scores above the best qualified trial (the others could not
    become the answer)."""
    candidates = {candidate.stem: candidate for candidate in pool}
    bar = best_qualified_score(_settings(ctx), outcomes, ctx.numbers)
    plans = []
    for outcome, numbers in promising(ctx, screened_outcomes):
        candidate = candidates[_stem(outcome.key)]
        if trial_key(candidate.stem, 1) in seen:
            continue
        if score(ctx.config.objective, numbers) <= bar:
            continue
        plans.append(
            ctx.plan(
                trial_key(candidate.stem, 1),
                candidate.family,
                1,
                candidate.pass_list(),
                f"{candidate.why} Screened at {numbers.speedup:.2f}x with a drop of "
                f"{numbers.drop:.2g}: measured in full with the budget the first "
                "promotions left.",
            )
        )
    return plans[: promoted_count(screened)]
