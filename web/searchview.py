"""What the page of an auto search shows, read from the search job's `result.auto` (rewritten
at every step of the search): its progress, the answer, every trial's numbers, the Pareto set,
the rejected families with their reasons and the preflight's findings.

The stored JSON is read leniently (a field missing or of another type is shown as not known):
the page of a search that has just been submitted, or that an older service wrote, still
renders. A trial is called the answer only when its own numbers show it faster than the
original by the paired interval and within the tolerance; nothing else is shown as a win."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Literal

from web.charts import Chart, SearchPoint, search_chart
from web.pareto import Candidate, pareto_best
from web.verdict import Speed

AnswerKind = Literal["best", "graph", "original"]

#: Why a search stopped, in words (`result.auto.stopped`).
STOPPED_WORDS = {
    "finished": "The search is over: every promising candidate was measured.",
    "budget_trials": "The trial budget was used up: the answer is the best found by then.",
    "budget_minutes": "The time budget ran out: the answer is the best found by then.",
    "canceled": "The search was canceled: the answer is the best found by then.",
}
RUNG_WORDS = {0: "screening", 1: "full measurement"}
NOT_KNOWN = "\u2013"


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _count(value: Any) -> int | None:
    number = _number(value)
    return None if number is None else int(number)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _moment(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _words(value: Any) -> list[tuple[str, str]]:
    """A mapping of name -> reason, as (name, reason) rows."""
    return [(str(k), str(v)) for k, v in _dict(value).items()]


@dataclass(frozen=True)
class TrialRow:
    key: str
    family: str
    rung: int | None
    status: str
    job_id: str | None
    why: str
    speed: Speed | None
    size_ratio: float | None
    drop: float | None
    within_tolerance: bool | None
    verdict: str | None
    error: str | None
    cached: bool
    pareto: bool = False
    answer: bool = False

    @property
    def rung_words(self) -> str:
        if self.rung is None:
            return NOT_KNOWN
        return RUNG_WORDS.get(self.rung, f"rung {self.rung}")

    @property
    def qualifies(self) -> bool:
        """Faster than the original by the paired interval, and within the tolerance."""
        return (
            self.speed is not None
            and self.speed.tone == "better"
            and self.within_tolerance is not False
        )

    @property
    def slower(self) -> bool:
        return self.speed is not None and self.speed.tone == "worse"


def _trial(data: dict[str, Any], batch: str) -> TrialRow | None:
    key = _text(data.get("key"))
    if key is None:
        return None
    speedup = _number(data.get("speedup"))
    interval = data.get("interval")
    bounds = (
        (float(interval[0]), float(interval[1]))
        if isinstance(interval, list | tuple)
        and len(interval) == 2
        and all(_number(v) is not None for v in interval)
        else None
    )
    within = data.get("within_tolerance")
    return TrialRow(
        key=key,
        family=_text(data.get("family")) or NOT_KNOWN,
        rung=_count(data.get("rung")),
        status=_text(data.get("status")) or "queued",
        job_id=_text(data.get("job_id")),
        why=_text(data.get("why")) or "",
        speed=None if speedup is None else Speed(batch=batch, speedup=speedup, interval=bounds),
        size_ratio=_number(data.get("size_ratio")),
        drop=_number(data.get("drop")),
        within_tolerance=within if isinstance(within, bool) else None,
        verdict=_text(data.get("verdict")),
        error=_text(data.get("error")),
        cached=data.get("cached") is True or bool(data.get("cached_from")),
    )


@dataclass(frozen=True)
class Progress:
    done: int
    running: int
    queued: int
    left: int | None
    budget_trials: int | None
    cached: int
    minutes: float | None
    started_at: datetime | None
    deadline_at: datetime | None

    def time_left(self, now: datetime) -> str | None:
        if self.deadline_at is None:
            return None
        seconds = (self.deadline_at - now).total_seconds()
        if seconds <= 0:
            return "the time budget has run out: the trials still running finish, then it answers"
        minutes = math.ceil(seconds / 60)
        unit = "minute" if minutes == 1 else "minutes"
        return f"about {minutes} {unit} left (until {self.deadline_at:%H:%M} UTC)"


def _progress(data: dict[str, Any]) -> Progress | None:
    if not data:
        return None
    return Progress(
        done=_count(data.get("done")) or 0,
        running=_count(data.get("running")) or 0,
        queued=_count(data.get("queued")) or 0,
        left=_count(data.get("left")),
        budget_trials=_count(data.get("budget_trials")),
        cached=_count(data.get("cached")) or 0,
        minutes=_number(data.get("minutes")),
        started_at=_moment(data.get("started_at")),
        deadline_at=_moment(data.get("deadline_at")),
    )


@dataclass(frozen=True)
class Answer:
    """The search's answer once it is final (or its best so far while it runs)."""

    kind: AnswerKind
    message: str
    trial: TrialRow | None = None
    #: Set when the answer named a trial whose own numbers do not qualify it.
    doubt: str | None = None

    @property
    def headline(self) -> str:
        if self.kind == "best" and self.trial is not None:
            return f"the best model found is {self.trial.key} ({self.trial.family})"
        if self.kind == "graph":
            return "Nothing qualified: the answer is the graph-optimized original"
        return "Nothing qualified: the answer is the original"


def _answer(data: dict[str, Any], trials: list[TrialRow], max_drop: float | None) -> Answer:
    message = _text(data.get("message")) or ""
    best = _text(data.get("best"))
    fallback = data.get("fallback")
    if fallback in ("graph", "original"):
        # Nothing qualified; `best` then names the graph trial whose model is handed back.
        return Answer(kind="graph" if fallback == "graph" else "original", message=message)
    by_key = {t.key: t for t in trials}
    trial = by_key.get(best) if best else None
    if trial is not None and trial.qualifies:
        return Answer(kind="best", message=message, trial=trial)
    if best is None:
        return Answer(kind="original", message=message)
    # The answer names a trial its own numbers do not show as faster within the tolerance:
    # never shown as a win.
    limit = f" (limit {max_drop:g})" if max_drop is not None else ""
    return Answer(
        kind="original",
        message="",
        doubt=f"The search named {best}, but its measured numbers do not show it faster than "
        f"the original by the paired interval and within the tolerance{limit}: keep the "
        "original.",
    )


@dataclass(frozen=True)
class SearchView:
    objective: str
    metric: str | None
    max_drop: float | None
    batch: str
    budget_trials: int | None
    budget_minutes: float | None
    allow: list[str]
    device: str
    #: None until the search's first step has written its result.
    progress: Progress | None
    stopped: str | None
    answer: Answer | None
    trials: list[TrialRow]
    chart: Chart | None
    rejected: list[tuple[str, str]]
    structure: str | None
    facts: list[tuple[str, str]]
    applicable: list[tuple[str, str]]
    skipped: list[tuple[str, str]]
    final: bool
    time_left: str | None = None

    @property
    def stopped_words(self) -> str | None:
        return STOPPED_WORDS.get(self.stopped or "")


def auto_config(spec: dict[str, Any]) -> dict[str, Any] | None:
    """The spec's auto pass, when the job is an auto search (its only pass)."""
    passes = spec.get("passes")
    if isinstance(passes, list) and len(passes) == 1 and _dict(passes[0]).get("kind") == "auto":
        return dict(passes[0])
    return None


def _fact(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "yes" if value else "no"
    return json.dumps(value, sort_keys=True)


def search_view(
    spec: dict[str, Any], result: dict[str, Any] | None, *, status: str, now: datetime
) -> SearchView | None:
    """None when the job is not an auto search."""
    config = auto_config(spec)
    if config is None:
        return None
    auto = _dict(_dict(result).get("auto"))
    budget = _dict(config.get("budget"))
    batch = str(_count(config.get("batch_size")) or 8)
    max_drop = _number(config.get("max_drop"))
    answer_data = _dict(auto.get("answer"))
    trials = [
        row
        for item in answer_data.get("trials") or []
        if isinstance(item, dict) and (row := _trial(item, batch)) is not None
    ]
    pareto = {str(k) for k in answer_data.get("pareto") or [] if isinstance(k, str)}
    if not pareto:
        # A result without the search's own Pareto set: computed from the full measurements.
        pareto = pareto_best(
            [
                Candidate(key=t.key, speedup=t.speed.speedup, size_ratio=t.size_ratio, drop=t.drop)
                for t in trials
                if t.rung == 1 and t.speed is not None and t.size_ratio is not None
            ]
        )
    final = status in ("succeeded", "failed", "canceled")
    answer = _answer(answer_data, trials, max_drop) if answer_data else None
    answer_key = answer.trial.key if answer and answer.trial else None
    trials = [replace(t, pareto=t.key in pareto, answer=t.key == answer_key) for t in trials]
    if answer and answer.trial:
        answer = replace(answer, trial=next(t for t in trials if t.key == answer_key))
    preflight = _dict(auto.get("preflight"))
    progress = _progress(_dict(auto.get("progress")))
    metric = _text(config.get("metric")) or _text(_dict(preflight.get("facts")).get("metric"))
    plotted = [
        SearchPoint(
            key=t.key,
            speedup=t.speed.speedup,
            size_ratio=t.size_ratio,
            drop=t.drop,
            pareto=t.pareto,
            answer=t.answer,
        )
        for t in trials
        if t.speed is not None and t.size_ratio is not None
    ]
    return SearchView(
        objective=_text(config.get("objective")) or "latency",
        metric=metric,
        max_drop=max_drop,
        batch=batch,
        budget_trials=_count(budget.get("trials")),
        budget_minutes=_number(budget.get("minutes")),
        allow=[str(a) for a in config.get("allow") or []],
        device=_text(config.get("device")) or "cpu",
        progress=progress,
        stopped=_text(auto.get("stopped")),
        answer=answer,
        trials=trials,
        chart=search_chart(plotted, batch=batch, metric=metric or "accuracy or fidelity")
        if plotted
        else None,
        rejected=_words(answer_data.get("rejected")),
        structure=_text(preflight.get("structure")),
        facts=[(str(k), _fact(v)) for k, v in _dict(preflight.get("facts")).items()],
        applicable=_words(preflight.get("applicable")),
        skipped=_words(preflight.get("skipped")),
        final=final,
        time_left=progress.time_left(now) if progress and not final else None,
    )
