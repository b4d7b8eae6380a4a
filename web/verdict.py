"""A succeeded job's comparison in plain words: smaller or larger, faster or slower at each
batch size (by the paired 95% interval, not by the medians alone), as accurate or not. A
result worse than the original leads with that, in words, so nobody ships it by mistake."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from api.results import Comparison, Metrics

Tone = Literal["better", "worse", "neutral"]


@dataclass(frozen=True)
class Finding:
    tone: Tone
    text: str


@dataclass(frozen=True)
class Verdict:
    tone: Tone
    #: The one line on top; for a worse result it names what is worse first.
    headline: str
    findings: list[Finding] = field(default_factory=list)
    #: The worker's own sentence (result.metrics.comparison.verdict).
    sentence: str | None = None

    @property
    def label(self) -> str:
        """Said before the headline, so the tone never rests on colour alone."""
        return {
            "better": "Better than the original",
            "worse": "Worse than the original",
            "neutral": "No clear gain",
        }[self.tone]


def times(value: float) -> str:
    """A ratio as people say it: 2.3 times is "2.30\u00d7"."""
    return f"{value:.1f}\u00d7" if value >= 10 else f"{value:.2f}\u00d7"


@dataclass(frozen=True)
class Speed:
    """The speed at one batch size: the median speed-up and its paired 95% interval."""

    batch: str
    speedup: float
    interval: tuple[float, float] | None

    @property
    def tone(self) -> Tone:
        if self.interval is None:  # no interval: the medians alone cannot settle it
            return "neutral"
        low, high = self.interval
        if low > 1.0:
            return "better"
        if high < 1.0:
            return "worse"
        return "neutral"

    def interval_text(self) -> str:
        if self.interval is None:
            return "no interval measured"
        low, high = self.interval
        if self.tone == "worse":  # said in the same words as the speed: slower by …
            most = times(1 / low) if low > 0 else "\u221e"
            return f"95% interval {times(1 / high)}\u2013{most} slower"
        return f"95% interval {times(low)}\u2013{times(high)}"

    def words(self) -> str:
        where = f"at batch {self.batch}"
        if self.tone == "better":
            return f"{times(self.speedup)} faster {where} ({self.interval_text()})"
        if self.tone == "worse":
            return f"{times(1 / self.speedup)} slower {where} ({self.interval_text()})"
        return (
            f"no measurable speed difference {where}: {times(self.speedup)} "
            f"({self.interval_text()}, which includes 1\u00d7)"
        )


def speeds(comparison: Comparison) -> list[Speed]:
    found = []
    for batch, speedup in sorted(comparison.speedup_p50.items(), key=lambda kv: _int(kv[0])):
        bounds = comparison.speedup_interval.get(batch)
        interval = (bounds[0], bounds[1]) if bounds and len(bounds) == 2 else None
        found.append(Speed(batch=batch, speedup=speedup, interval=interval))
    return found


def _int(text: str) -> int:
    return int(text) if text.isdigit() else 0


def _size(ratio: float) -> Finding:
    if ratio < 1.0:
        return Finding("better", f"{times(1 / ratio)} smaller ({ratio:.0%} of the original size)")
    if ratio > 1.0:
        return Finding("worse", f"Larger than the original: {times(ratio)} its size")
    return Finding("neutral", "the same size as the original")


def _quality(comparison: Comparison) -> Finding | None:
    drop, limit = comparison.drop, comparison.max_drop
    if comparison.metric is None or drop is None:
        return None
    if comparison.metric == "accuracy":
        amount = f"{abs(drop) * 100:.1f} points"
        limit_text = f" (limit {limit * 100:.1f} points)" if limit is not None else ""
        if comparison.within_tolerance is False:
            return Finding(
                "worse", f"Less accurate than allowed: accuracy fell {amount}{limit_text}"
            )
        if drop > 0:
            within = f" (within the limit of {limit * 100:.1f} points)" if limit is not None else ""
            return Finding("neutral", f"accuracy fell {amount}{within}")
        if drop < 0:
            return Finding("better", f"more accurate: accuracy rose {amount}")
        return Finding("better", "as accurate as the original (no accuracy drop)")
    amount = f"{drop:.4f}"
    limit_text = f" (limit {limit:g})" if limit is not None else ""
    if comparison.within_tolerance is False:
        return Finding(
            "worse",
            f"Outputs differ from the original's more than allowed: fidelity loss "
            f"{amount} (1 - cosine){limit_text}",
        )
    return Finding(
        "better" if drop <= 0 else "neutral",
        f"outputs close to the original's: fidelity loss {amount} (1 - cosine)"
        + (f", within the limit of {limit:g}" if limit is not None else ""),
    )


def verdict_of(metrics: Metrics | None) -> Verdict | None:
    """None when the job has no comparison (not succeeded, or an older result shape)."""
    comparison = metrics.comparison if metrics else None
    if comparison is None:
        return None
    findings = []
    measured = speeds(comparison)
    slower = [s for s in measured if s.tone == "worse"]
    if slower:
        worst = min(slower, key=lambda s: s.speedup)
        findings.append(Finding("worse", f"Slower than the original: {worst.words()}"))
        findings += [Finding(s.tone, s.words()) for s in measured if s is not worst]
    else:
        findings += [Finding(s.tone, s.words()) for s in measured]
    quality = _quality(comparison)
    if quality is not None:
        findings.append(quality)
    else:
        findings.append(Finding("neutral", "accuracy was not measured (the spec has no evaluate)"))
    findings.append(_size(comparison.size_ratio))

    # The worker's own flag counts too: it is what `modelpress compare --fail-on-slower` uses.
    worse = [f for f in findings if f.tone == "worse"]
    if comparison.slower_than_baseline and not slower:
        worse.insert(0, Finding("worse", "Slower than the original at some batch size"))
        findings.insert(0, worse[0])
    if worse:
        return Verdict("worse", worse[0].text, _worse_first(findings), comparison.verdict)
    gains = [f for f in findings if f.tone == "better"]
    tone: Tone = "better" if gains else "neutral"
    return Verdict(tone, _summary(comparison, measured), findings, comparison.verdict)


def _worse_first(findings: list[Finding]) -> list[Finding]:
    return sorted(findings, key=lambda f: f.tone != "worse")


def _summary(comparison: Comparison, measured: list[Speed]) -> str:
    """The headline of a result that is nowhere worse: size, speed, quality in a few words."""
    ratio = comparison.size_ratio
    parts = [f"{times(1 / ratio)} smaller" if ratio < 1 else "the same size"]
    faster = [s for s in measured if s.tone == "better"]
    if faster:
        best = max(faster, key=lambda s: s.speedup)
        parts.append(f"{'up to ' if len(measured) > 1 else ''}{times(best.speedup)} faster")
    elif measured:
        parts.append("no measurable speed difference")
    quality = _quality(comparison)
    if quality is None:
        parts.append("accuracy not measured")
    elif quality.tone == "better":
        parts.append("as accurate" if comparison.metric == "accuracy" else "same outputs")
    else:
        parts.append("within the accuracy limit")
    return ", ".join(parts)
