"""The order of the search: screening, promotion, refinements, budget and keys."""

from __future__ import annotations

import re
from collections.abc import Callable

from optimizers.auto.preflight import Preflight
from optimizers.auto.search import TrialOutcome, TrialPlan, next_trials
from optimizers.config import PipelineSpec
from tests.optimizers.auto.builders import outcome, plan_for

#: Screening numbers per stem: (speed-up, drop); anything else is 1.1x at drop 0.001.
TRANSFORMER_SCREEN = {
    "int8-dynamic-pc": (2.0, 0.006),
    "int8-dynamic-sq": (1.95, 0.002),
    "int8-static-tp": (1.9, 0.002),
    "fused-int8-dynamic-pc": (1.85, 0.006),
    "int8-dynamic-pt": (1.8, 0.009),
    "int8-static-tp-pct": (1.7, 0.004),
    "int8-static-pc": (1.9, 0.64),
    "int4-wo": (0.85, 0.0),
}


def _stem(key: str) -> str:
    return key.rsplit("-r", 1)[0]


def _measure(table: dict[str, tuple[float, float]]) -> Callable[[TrialPlan], TrialOutcome]:
    def measure(plan: TrialPlan) -> TrialOutcome:
        speedup, drop = table.get(_stem(plan.key), (1.1, 0.001))
        return outcome(plan, speedup=speedup, drop=drop)

    return measure


def _run(
    spec: PipelineSpec, pre: Preflight, measure: Callable[[TrialPlan], TrialOutcome]
) -> list[TrialOutcome]:
    """The service's loop, with every started trial finishing before the next call."""
    total = spec.passes[0].budget.trials  # type: ignore[attr-defined]
    outcomes: list[TrialOutcome] = []
    while plans := next_trials(spec, pre, outcomes, budget_left=total - len(outcomes)):
        outcomes += [measure(plan) for plan in plans]
    return outcomes


def test_the_first_call_starts_the_fallback_then_screens_every_candidate() -> None:
    spec, pre = plan_for("transformer")
    plans = next_trials(spec, pre, [], budget_left=24)
    assert (plans[0].key, plans[0].family, plans[0].rung) == ("graph-r1", "graph", 1)
    assert plans[0].spec["passes"] == [{"kind": "graph_optimize", "level": "basic"}]
    assert all(plan.rung == 0 for plan in plans[1:])
    assert plans[1].key == "int8-static-tp-r0"
    assert all(re.fullmatch(r"[a-z0-9-]{1,64}", plan.key) for plan in plans)
    for plan in plans:
        PipelineSpec.model_validate(plan.spec)
    assert next_trials(spec, pre, [], budget_left=24) == plans  # deterministic


def test_nothing_new_starts_while_screening_trials_run() -> None:
    spec, pre = plan_for("transformer")
    plans = next_trials(spec, pre, [], budget_left=24)
    running = [outcome(plan, status="running") for plan in plans]
    running[0] = outcome(plans[0], speedup=1.0)
    assert next_trials(spec, pre, running, budget_left=24 - len(plans)) == []


def test_the_best_screened_third_is_measured_in_full_and_bad_branches_are_dropped() -> None:
    spec, pre = plan_for("transformer")
    plans = next_trials(spec, pre, [], budget_left=24)
    screened = [p for p in plans if p.rung == 0]
    done = [outcome(plans[0], speedup=1.0)]
    for plan in screened:
        stem = _stem(plan.key)
        if stem == "prune-s25":
            done.append(outcome(plan, status="failed", error="unsupported: no converter"))
        else:
            speedup, drop = TRANSFORMER_SCREEN.get(stem, (1.1, 0.001))
            done.append(outcome(plan, speedup=speedup, drop=drop))
    more = next_trials(spec, pre, done, budget_left=24 - len(done))
    promoted = [p.key for p in more[:4]]
    # A third of 11 screened (4), best first by latency among those within the tolerance.
    assert promoted == [
        "int8-dynamic-pc-r1",
        "int8-dynamic-sq-r1",
        "int8-static-tp-r1",
        "fused-int8-dynamic-pc-r1",
    ]
    # Then the refinements: the combination of the best shrinking and int8 trials.
    assert [p.family for p in more[4:]] == ["distill+int8_dynamic"]
    full = next(p for p in more if p.key == "int8-static-tp-r1")
    assert full.spec["passes"][0]["preset"] == "transformer"
    assert "samples" not in full.spec["evaluate"]
    assert full.spec["benchmark"]["iterations"] == 100


def test_a_slower_failed_or_far_out_of_tolerance_trial_is_never_promoted() -> None:
    spec, pre = plan_for("mlp", allow=["quantize"])
    plans = next_trials(spec, pre, [], budget_left=24)
    numbers = {
        "int8-dynamic-pt": (0.8, 0.0, (0.7, 0.95)),  # slower by the whole interval
        "int8-dynamic-pc": (2.5, 0.05, None),  # 5x the tolerance
        "int8-static-pc": (1.2, 0.015, None),  # within twice the tolerance
        "int8-static-pt": (1.1, 0.001, None),
    }
    done = [outcome(plans[0], speedup=1.0)]
    for plan in plans[1:]:
        stem = _stem(plan.key)
        if stem in numbers:
            speedup, drop, interval = numbers[stem]
            done.append(outcome(plan, speedup=speedup, drop=drop, interval=interval))
        else:
            done.append(outcome(plan, status="failed", error="quantization_failed: boom"))
    promoted = [p.key for p in next_trials(spec, pre, done, budget_left=20)]
    assert promoted == ["int8-static-pt-r1", "int8-static-pc-r1"]


def test_a_budget_of_24_reaches_the_static_transformer_preset_in_full() -> None:
    spec, pre = plan_for("transformer")
    outcomes = _run(spec, pre, _measure(TRANSFORMER_SCREEN))
    keys = [o.key for o in outcomes]
    assert "int8-static-tp-r1" in keys
    assert len(keys) == len(set(keys)) <= 24


def test_the_budget_is_respected_and_no_key_is_issued_twice() -> None:
    for trials in (1, 2, 3, 4, 5, 8, 12, 24, 60):
        spec, pre = plan_for("transformer", budget={"trials": trials})
        outcomes = _run(spec, pre, _measure(TRANSFORMER_SCREEN))
        keys = [o.key for o in outcomes]
        assert len(keys) == len(set(keys)) <= trials, trials
        assert keys[0] == "graph-r1"
        assert any(o.rung == 1 and o.family != "graph" for o in outcomes) == (trials > 1)
    spec, pre = plan_for("transformer")
    assert len(next_trials(spec, pre, [], budget_left=3)) == 3
    assert next_trials(spec, pre, [], budget_left=0) == []


def test_a_tiny_budget_measures_the_first_candidates_in_full() -> None:
    spec, pre = plan_for("cnn", budget={"trials": 3})
    plans = next_trials(spec, pre, [], budget_left=3)
    assert [(p.key, p.rung) for p in plans] == [
        ("graph-r1", 1),
        ("int8-static-pc-r1", 1),
        ("int8-static-pc-ent-r1", 1),
    ]


def test_a_static_trial_that_dropped_too_much_is_refined_with_the_mixed_scope() -> None:
    spec, pre = plan_for("transformer", allow=["quantize"])

    def measure(plan: TrialPlan) -> TrialOutcome:
        if _stem(plan.key) == "int8-static-pc":
            return outcome(plan, speedup=1.9, drop=0.014, worst_nodes=["/ff1/MatMul"])
        if plan.family.startswith("int8_static"):
            return outcome(plan, speedup=1.5, drop=0.001)
        return outcome(plan, speedup=1.5, drop=0.05)

    done = [measure(p) for p in next_trials(spec, pre, [], budget_left=24)]
    promoted = next_trials(spec, pre, done, budget_left=24 - len(done))
    # Promoted first (its full measurement decides), refined after.
    assert "int8-static-pc-r1" in [p.key for p in promoted]
    assert not any(p.family == "mixed" for p in promoted)
    done += [measure(p) for p in promoted]
    more = next_trials(spec, pre, done, budget_left=24 - len(done))
    mixed = [p for p in more if p.family == "mixed"]
    assert [p.key for p in mixed] == ["mixed-int8-static-pc-r1"]
    quantize = mixed[0].spec["passes"][0]
    assert quantize["scope"] == "mixed" and quantize["mixed"]["max_drop"] == 0.008
    assert quantize["calibration"]["method"] == "minmax" and "per_node" not in quantize
    assert "0.014" in mixed[0].why
    PipelineSpec.model_validate(mixed[0].spec)
    # Issued once: the finished refinement is not asked for again.
    later = [*done, *(outcome(p, speedup=1.5, drop=0.001) for p in more)]
    assert not any(p.family == "mixed" for p in next_trials(spec, pre, later, budget_left=9))


def test_pruning_and_int8_that_both_hold_are_combined() -> None:
    spec, pre = plan_for("cnn")
    table = {
        "int8-static-pc": (1.8, 0.003),
        "prune-s25": (1.3, 0.002),
        "prune-s50": (1.6, 0.02),
        "int8-dynamic-pc": (0.7, 0.001),
    }
    outcomes = _run(spec, pre, _measure(table))
    combo = next(o for o in outcomes if "+" in o.family)
    assert combo.key == "prune-s25-int8-static-pc-r1"
    assert combo.family == "prune_structured+int8_static"
    assert [p["kind"] for p in combo.spec["passes"]] == ["prune", "quantize"]
    PipelineSpec.model_validate(combo.spec)
    assert not any(o.key.startswith("int8-dynamic-pc-r1") for o in outcomes)


def test_the_same_inputs_give_the_same_plans() -> None:
    spec, pre = plan_for("transformer")
    first = _run(spec, pre, _measure(TRANSFORMER_SCREEN))
    again = _run(spec, pre, _measure(TRANSFORMER_SCREEN))
    assert first == again


def test_a_screening_cut_by_budget_left_resumes_before_any_promotion() -> None:
    spec, pre = plan_for("transformer")
    first = next_trials(spec, pre, [], budget_left=5)
    assert [p.key for p in first][:2] == ["graph-r1", "int8-static-tp-r0"] and len(first) == 5
    done = [outcome(p, speedup=1.5, drop=0.001) for p in first]
    rest = next_trials(spec, pre, done, budget_left=19)
    assert rest and all(p.rung == 0 for p in rest)
    assert not {p.key for p in rest} & {p.key for p in first}
