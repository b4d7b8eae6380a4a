"""The answer: never a slower or out-of-tolerance model, the Pareto set, and the reasons."""

from __future__ import annotations

from typing import Any

from optimizers.auto.answer import answer
from optimizers.auto.search import TrialOutcome, TrialPlan
from tests.optimizers.auto.builders import outcome, plan_for


def _plan(key: str, family: str, rung: int = 1) -> TrialPlan:
    return TrialPlan(key=key, family=family, rung=rung, spec={"passes": []}, why=f"why {key}")


def _trial(key: str, family: str, rung: int = 1, **numbers: Any) -> TrialOutcome:
    return outcome(_plan(key, family, rung), **numbers)


def test_the_best_qualifying_full_trial_is_the_answer_and_reads_in_words() -> None:
    spec, pre = plan_for("transformer")
    outcomes = [
        _trial("graph-r1", "graph", speedup=1.02, interval=(0.98, 1.06), size_ratio=1.0, drop=0.0),
        _trial(
            "int8-static-tp-r1",
            "int8_static_transformer",
            speedup=1.94,
            drop=0.0021,
            size_ratio=0.256,
        ),
        _trial("int8-dynamic-pc-r1", "int8_dynamic", speedup=1.99, drop=0.0077, size_ratio=0.254),
        # Faster, but out of tolerance, or only screened: never the answer.
        _trial(
            "int8-static-pc-r1",
            "int8_static",
            speedup=2.2,
            drop=0.034,
            worst_nodes=["/ff/MatMul", "/q/MatMul"],
        ),
        _trial("int8-dynamic-sq-r0", "int8_dynamic_smooth", 0, speedup=2.5, drop=0.001),
    ]
    found = answer(spec, pre, outcomes)
    assert found["best"] == "int8-dynamic-pc-r1"
    assert found["best_job_id"] == "job-int8-dynamic-pc-r1"
    assert found["fallback"] is None and found["original"] is False
    assert found["message"] == (
        "int8 dynamic: 1.99x faster at batch 8 (interval 1.94-2.04), fidelity drop 0.0077 "
        "(limit 0.01), 3.9x smaller"
    )
    rejected = found["rejected"]
    assert rejected["int8_static"] == (
        "int8 static dropped 0.034 (limit 0.01): most sensitive nodes /ff/MatMul, /q/MatMul"
    )
    assert "ranks higher for objective 'latency'" in rejected["int8_static_transformer"]
    assert "not measurably faster: 1.02x at batch 8 (interval 0.98-1.06)" in rejected["graph"]
    assert "screened at 2.50x" in rejected["int8_dynamic_smooth"]
    assert "int8_dynamic" not in rejected
    entry = next(t for t in found["trials"] if t["key"] == "int8-static-pc-r1")
    assert entry["within_tolerance"] is False and entry["drop"] == 0.034
    assert entry["interval"] == [2.15, 2.25] and entry["job_id"] == "job-int8-static-pc-r1"
    assert entry["why"].startswith("Static int8")  # rebuilt from the candidate


def test_objectives_rank_by_speed_size_or_both() -> None:
    outcomes = [
        _trial("a-r1", "int8_dynamic", speedup=2.0, size_ratio=0.5),
        _trial("b-r1", "int4_weight_only", speedup=1.2, size_ratio=0.15),
        _trial("c-r1", "int8_static", speedup=1.8, size_ratio=0.26),
    ]
    best = {}
    for objective in ("latency", "size", "balanced"):
        spec, pre = plan_for("transformer", objective=objective)
        best[objective] = answer(spec, pre, outcomes)["best"]
    # balanced: 2.0/0.5 = 4, 1.2/0.15 = 8, 1.8/0.26 = 6.9
    assert best == {"latency": "a-r1", "size": "b-r1", "balanced": "b-r1"}


def test_without_a_qualifying_trial_the_answer_is_the_graph_trial_then_the_original() -> None:
    spec, pre = plan_for("cnn")
    slower = _trial(
        "int8-dynamic-pc-r1", "int8_dynamic", speedup=0.74, interval=(0.70, 0.78), drop=0.001
    )
    dropped = _trial("int8-static-pc-r1", "int8_static", speedup=1.9, drop=0.02)
    failed = outcome(
        _plan("prune-s25-r1", "prune_structured"),
        status="failed",
        error="unsupported: the prune pass trains the model in batches on axis 0",
    )
    graph = _trial(
        "graph-r1", "graph", speedup=1.01, interval=(0.97, 1.05), size_ratio=0.99, drop=0.0
    )
    found = answer(spec, pre, [graph, slower, dropped, failed])
    assert (found["best"], found["fallback"], found["original"]) == ("graph-r1", "graph", False)
    assert found["message"].startswith("no trial was both within the tolerance (0.01) and faster")
    assert "graph-optimized original" in found["message"]
    assert found["rejected"]["int8_dynamic"] == (
        "int8 dynamic is slower here: 0.74x at batch 8 (interval 0.70-0.78); the convolutions "
        "do not run as quantized kernels on this CPU"
    )
    assert found["rejected"]["prune_structured"].startswith("failed: unsupported: the prune pass")
    assert found["rejected"]["int8_static"] == "int8 static dropped 0.02 (limit 0.01)"

    # A graph trial that is itself slower, or out of tolerance, is not an answer either.
    slow_graph = _trial("graph-r1", "graph", speedup=0.9, interval=(0.85, 0.95), drop=0.0)
    found = answer(spec, pre, [slow_graph, slower, dropped])
    assert (found["best"], found["best_job_id"]) == (None, None)
    assert (found["fallback"], found["original"]) == ("original", True)
    assert found["message"].endswith("the answer is the original model, unchanged")
    assert found["pareto"] == []
    found = answer(spec, pre, [])
    assert found["original"] is True and found["trials"] == []


def test_an_int4_trial_that_is_slower_says_so() -> None:
    spec, pre = plan_for("transformer", objective="size")
    int4 = _trial("int4-wo-r0", "int4_weight_only", 0, speedup=0.9, interval=(0.86, 0.94))
    found = answer(spec, pre, [int4])
    assert found["rejected"]["int4_weight_only"].startswith(
        "int4 weight-only is slower here: 0.90x at batch 8 (interval 0.86-0.94)"
    )


def test_the_pareto_set_holds_the_full_trials_no_other_beats_on_speed_size_and_drop() -> None:
    spec, pre = plan_for("transformer")
    outcomes = [
        _trial("fast-r1", "int8_dynamic", speedup=2.0, size_ratio=0.26, drop=0.008),
        _trial("faithful-r1", "int8_static_transformer", speedup=1.9, size_ratio=0.26, drop=0.001),
        _trial(
            "small-r1",
            "int4_weight_only",
            speedup=1.05,
            interval=(0.95, 1.1),
            size_ratio=0.15,
            drop=0.004,
        ),
        _trial("worse-r1", "int8_static", speedup=1.8, size_ratio=0.27, drop=0.009),
        _trial("dropped-r1", "int8_static", speedup=2.5, size_ratio=0.2, drop=0.05),
        _trial("slow-r1", "fp16", speedup=0.5, interval=(0.45, 0.55), size_ratio=0.1, drop=0.0),
        _trial("screen-r0", "int8_dynamic", 0, speedup=3.0, size_ratio=0.1, drop=0.0),
    ]
    found = answer(spec, pre, outcomes)
    assert found["pareto"] == ["fast-r1", "faithful-r1", "small-r1"]
    assert found["best"] == "fast-r1"


def test_unfinished_and_canceled_trials_are_reported_as_such() -> None:
    spec, pre = plan_for("mlp")
    running = outcome(_plan("int8-dynamic-pt-r1", "int8_dynamic"), status="running")
    canceled = outcome(_plan("int8-static-pc-r1", "int8_static"), status="canceled")
    found = answer(spec, pre, [running, canceled])
    assert found["rejected"] == {
        "int8_dynamic": "not finished when the search ended",
        "int8_static": "canceled before it was measured",
    }
    assert found["original"] is True


def test_a_search_cut_short_answers_with_a_qualifying_screened_trial() -> None:
    spec, pre = plan_for("transformer")
    outcomes = [
        _trial("graph-r1", "graph", speedup=1.0, interval=(0.97, 1.03), drop=0.0),
        _trial("int8-dynamic-pc-r0", "int8_dynamic", 0, speedup=1.9, drop=0.004),
        _trial("int8-static-pc-r0", "int8_static", 0, speedup=2.3, drop=0.04),
        _trial("int4-wo-r0", "int4_weight_only", 0, speedup=0.9, interval=(0.85, 0.95)),
    ]
    finished = answer(spec, pre, outcomes)
    assert (finished["best"], finished["fallback"]) == ("graph-r1", "graph")
    assert finished["screened_only"] is False
    stopped = answer(spec, pre, outcomes, cut_short=True)
    assert (stopped["best"], stopped["fallback"]) == ("int8-dynamic-pc-r0", None)
    assert stopped["screened_only"] is True
    assert stopped["message"].endswith(
        "(screened only: the search stopped before its full measurement)"
    )
    # Never a slower or out-of-tolerance screened trial.
    assert answer(spec, pre, outcomes[2:], cut_short=True)["original"] is True


def test_mixed_precision_trials_say_how_many_nodes_they_kept_in_float() -> None:
    spec, pre = plan_for("mlp", metric="accuracy")
    dynamic = _trial("int8-dynamic-pt-r1", "int8_dynamic", speedup=3.18, drop=0.0156)
    still_over = _trial(
        "mixed-int8-dynamic-pt-r1",
        "mixed",
        speedup=2.9,
        drop=0.0137,
        kept_float=["/0/Gemm"],
        mixed_drop=0.006,
    )
    qualified = _trial(
        "mixed-int8-dynamic-pt-g2-r1",
        "mixed",
        speedup=2.6,
        drop=0.008,
        size_ratio=0.3,
        kept_float=["/0/Gemm", "/2/Gemm", "/4/Gemm", "/6/Gemm", "/8/Gemm"],
        mixed_drop=0.002,
    )
    found = answer(spec, pre, [dynamic, still_over, qualified])
    assert found["best"] == "mixed-int8-dynamic-pt-g2-r1"
    assert found["message"] == (
        "mixed precision (5 nodes kept in float): 2.60x faster at batch 8 (interval "
        "2.55-2.65), fidelity drop 0.008 (limit 0.01), 3.3x smaller"
    )
    assert found["rejected"]["int8_dynamic"] == "int8 dynamic dropped 0.016 (limit 0.01)"

    # Without the qualified one: the refinement that is still over says so.
    found = answer(spec, pre, [dynamic, still_over])
    assert found["rejected"]["mixed"] == (
        "mixed precision kept 1 node in float and still dropped 0.014 (limit 0.01)"
    )

    # Qualified but beaten by a faster model.
    faster = _trial("int8-static-pc-r1", "int8_static", speedup=3.0, drop=0.004)
    found = answer(spec, pre, [dynamic, qualified, faster])
    assert found["best"] == "int8-static-pc-r1"
    assert found["rejected"]["mixed"].startswith(
        "mixed precision kept 5 nodes in float and dropped 0.008: qualified (2.60x at batch 8"
    )
