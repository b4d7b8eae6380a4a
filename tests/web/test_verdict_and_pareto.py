# ruff: noqa: RUF001, RUF003 (the pages say "2.30×" and "1.1–1.3": the tests read them so)
"""The verdict's words and the Pareto set, on their own."""

from __future__ import annotations

from typing import Any

from api.results import Metrics
from web.pareto import Candidate, pareto_best
from web.verdict import verdict_of


def _metrics(
    *,
    speedup: dict[str, float],
    interval: dict[str, list[float]],
    size_ratio: float = 0.3,
    **quality: Any,
) -> Metrics:
    return Metrics.model_validate(
        {
            "comparison": {
                "size_ratio": size_ratio,
                "speedup_p50": speedup,
                "speedup_interval": interval,
                "slower_than_baseline": any(high < 1 for _, high in interval.values()),
                **quality,
            }
        }
    )


def test_less_accurate_than_allowed_leads_the_verdict_even_when_faster() -> None:
    verdict = verdict_of(
        _metrics(
            speedup={"1": 2.0},
            interval={"1": [1.8, 2.2]},
            metric="accuracy",
            drop=0.031,
            max_drop=0.01,
            within_tolerance=False,
        )
    )
    assert verdict is not None and verdict.tone == "worse"
    assert verdict.label == "Worse than the original"
    assert (
        verdict.headline
        == "Less accurate than allowed: accuracy fell 3.1 points (limit 1.0 points)"
    )
    assert "2.00× faster at batch 1 (95% interval 1.80×–2.20×)" in [
        f.text for f in verdict.findings
    ]


def test_slower_says_how_much_slower_with_the_interval_in_the_same_terms() -> None:
    verdict = verdict_of(
        _metrics(speedup={"1": 0.5, "8": 0.9}, interval={"1": [0.4, 0.625], "8": [0.8, 1.1]})
    )
    assert verdict is not None and verdict.tone == "worse"
    assert verdict.headline == (
        "Slower than the original: 2.00× slower at batch 1 (95% interval 1.60×–2.50× slower)"
    )
    texts = [f.text for f in verdict.findings]
    assert (
        "no measurable speed difference at batch 8: 0.90× "
        "(95% interval 0.80×–1.10×, which includes 1×)" in texts
    )
    assert "accuracy was not measured (the spec has no evaluate)" in texts


def test_larger_than_the_original_is_worse() -> None:
    verdict = verdict_of(_metrics(speedup={"1": 1.5}, interval={"1": [1.2, 1.7]}, size_ratio=1.25))
    assert verdict is not None and verdict.tone == "worse"
    assert verdict.headline == "Larger than the original: 1.25× its size"


def test_no_comparison_no_verdict() -> None:
    assert verdict_of(None) is None
    assert verdict_of(Metrics()) is None


def test_pareto_best_are_those_nothing_beats_on_every_count() -> None:
    candidates = [
        Candidate("fast", speedup=3.0, size_ratio=0.5, drop=0.02),
        Candidate("accurate", speedup=1.5, size_ratio=0.5, drop=0.0),
        Candidate("small", speedup=1.2, size_ratio=0.1, drop=0.03),
        # As small and as accurate as "fast", only slower: beaten though it ties on two counts.
        Candidate("dominated", speedup=2.0, size_ratio=0.5, drop=0.02),
        Candidate("twin", speedup=3.0, size_ratio=0.5, drop=0.02),  # equal to "fast": kept
        # Ties "accurate" on speed and size; a drop not measured cannot beat a measured one.
        Candidate("unmeasured", speedup=1.5, size_ratio=0.5, drop=None),
    ]
    assert pareto_best(candidates) == {"fast", "accurate", "small", "twin"}


def test_an_unmeasured_drop_can_still_win_on_speed_or_size() -> None:
    candidates = [
        Candidate("measured", speedup=1.5, size_ratio=0.5, drop=0.0),
        Candidate("fastest", speedup=4.0, size_ratio=0.5, drop=None),
    ]
    assert pareto_best(candidates) == {"measured", "fastest"}
    assert pareto_best([]) == set()


def test_an_interval_that_reaches_zero_speed_is_said_without_dividing_by_it() -> None:
    verdict = verdict_of(_metrics(speedup={"1": 0.25}, interval={"1": [0.0, 0.5]}))
    assert verdict is not None
    assert verdict.headline.endswith("4.00× slower at batch 1 (95% interval 2.00×–∞ slower)")
