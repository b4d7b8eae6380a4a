"""The final comparison of the optimized model with the original, and the verdict in words."""

from __future__ import annotations

from typing import Any

from optimizers.config import PipelineSpec

#: Float noise allowed when comparing a drop with its limit (1 - 0.99 is 0.010000000000000009).
_TOLERANCE_EPSILON = 1e-9


def compare(
    spec: PipelineSpec,
    measured: dict[str, dict[str, Any]],
    fidelity: dict[str, Any],
    paired: dict[str, dict[str, float]],
) -> dict[str, Any]:
    base, opt = measured["baseline"], measured["optimized"]
    size_ratio = opt["size_bytes"] / base["size_bytes"]
    speedups = {
        batch: round(base["latency_ms"][batch]["p50"] / opt["latency_ms"][batch]["p50"], 3)
        for batch in base["latency_ms"]
    }
    intervals = {batch: (paired[batch]["low"], paired[batch]["high"]) for batch in speedups}
    accuracy_drop = (
        base["accuracy"] - opt["accuracy"]
        if base["accuracy"] is not None and opt["accuracy"] is not None
        else None
    )
    fidelity_loss = max(0.0, 1.0 - fidelity["cosine_mean"])
    max_drop: float | None = None
    within: bool | None = None
    if (
        spec.evaluate is not None
        and accuracy_drop is not None
        and spec.evaluate.metric != "fidelity"
    ):
        metric, drop = "accuracy", accuracy_drop
    else:
        metric, drop = "fidelity", fidelity_loss
    if spec.evaluate is not None:
        max_drop = spec.evaluate.max_drop
        within = drop <= max_drop + _TOLERANCE_EPSILON
    return {
        "size_ratio": round(size_ratio, 4),
        "speedup_p50": speedups,
        "speedup_interval": {batch: list(bounds) for batch, bounds in intervals.items()},
        "accuracy_drop": accuracy_drop,
        "metric": metric,
        "drop": drop,
        "max_drop": max_drop,
        "slower_than_baseline": any(
            _speed_change(s, intervals[batch]) == "slower" for batch, s in speedups.items()
        ),
        "within_tolerance": within,
        "verdict": verdict_text(
            size_ratio=size_ratio,
            speedups=speedups,
            intervals=intervals,
            metric=metric,
            drop=drop,
            max_drop=max_drop,
            fidelity=fidelity,
        ),
    }


def _speed_change(speedup: float, interval: tuple[float, float]) -> str:
    """ "faster", "slower" or "same": a change counts when the 95% interval of the paired
    speedups lies wholly on the side of 1 the median speedup is on."""
    low, high = interval
    if speedup < 1.0 and high < 1.0:
        return "slower"
    if speedup >= 1.0 and low > 1.0:
        return "faster"
    return "same"


def verdict_text(
    *,
    size_ratio: float,
    speedups: dict[str, float],
    intervals: dict[str, tuple[float, float]],
    metric: str,
    drop: float,
    max_drop: float | None,
    fidelity: dict[str, Any],
) -> str:
    """One plain sentence: what got better first, then what got worse, in capitals, so that
    a slower or less accurate model is never read as an improvement."""
    good: list[str] = []
    bad: list[str] = []
    if size_ratio < 1.0:
        good.append(f"{_times(1.0 / size_ratio)} smaller")
    else:
        bad.append(f"NOT smaller ({size_ratio:.2f}x the original size)")

    change = {batch: _speed_change(s, intervals[batch]) for batch, s in speedups.items()}
    faster = [(batch, s) for batch, s in speedups.items() if change[batch] == "faster"]
    slower = [(batch, s) for batch, s in speedups.items() if change[batch] == "slower"]
    same = [(batch, s) for batch, s in speedups.items() if change[batch] == "same"]
    if faster:
        (first_batch, first), *others = faster
        good.append(
            f"{_times(first)} faster at batch {first_batch}"
            + "".join(f", {_times(s)} at batch {batch}" for batch, s in others)
        )
    if same:
        parts = [f"batch {batch} ({_times(s)})" for batch, s in same]
        good.append("no measurable speed difference at " + " and ".join(parts))
    if slower:
        parts = [f"batch {batch} ({_times(s)})" for batch, s in slower]
        bad.append("SLOWER than the original at " + " and ".join(parts))

    neutral = ""
    if max_drop is None:
        neutral = (
            f"output cosine similarity {fidelity['cosine_mean']:.4f} on "
            f"{fidelity['source'].replace('_', ' ')} (accuracy not checked)"
        )
    elif metric == "accuracy":
        if drop <= 0.0:
            good.append(
                "no accuracy drop" if drop == 0.0 else f"accuracy up {_points(-drop)} points"
            )
        elif drop <= max_drop + _TOLERANCE_EPSILON:
            good.append(f"accuracy drop {_points(drop)} points (within {_points(max_drop)})")
        else:
            bad.append(
                f"accuracy DROPPED {_points(drop)} points, over the {_points(max_drop)}-point limit"
            )
    elif drop <= max_drop + _TOLERANCE_EPSILON:
        good.append(f"fidelity loss {drop:.2g} (1 - cosine, within {max_drop:g})")
    else:
        bad.append(f"fidelity loss {drop:.2g} (1 - cosine) is OVER the {max_drop:g} limit")

    sentence = ", ".join(good)
    if bad:
        sentence = f"{sentence} but {', '.join(bad)}" if sentence else ", ".join(bad)
    if neutral:
        sentence = f"{sentence}; {neutral}"
    return sentence[:1].upper() + sentence[1:]


def _times(ratio: float) -> str:
    # More decimals near 1x, where "1.0x faster" or "SLOWER (1.00x)" would hide which side
    # of 1 the measurement fell on.
    if ratio >= 1.1:
        return f"{ratio:.1f}x"
    text = f"{ratio:.2f}x"
    return f"{ratio:.3f}x" if text == "1.00x" else text


def _points(fraction: float) -> str:
    points = fraction * 100.0
    return f"{points:.1f}" if abs(points) >= 0.1 else f"{points:.2g}"
