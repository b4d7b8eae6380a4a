"""An auto search in the terminal: the spec `modelpress auto` submits, a line of progress,
the trials table and the answer in words, read from the search job's `result.auto`.

A trial is called the answer only when its own numbers show it faster than the original by
the paired interval and within the tolerance; anything else reads "nothing qualified"."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from rich.table import Table

from modelpress.models import AutoResult, AutoTrial, Job

STOPPED_WORDS = {
    "finished": "every promising candidate was measured",
    "budget_trials": "the trial budget was used up; this is the best found by then",
    "budget_minutes": "the time budget ran out; this is the best found by then",
    "canceled": "the search was canceled; this is the best found by then",
}


def auto_spec(
    *,
    model_id: str,
    dataset_id: str,
    objective: str,
    max_drop: float | None,
    eval_dataset_id: str | None = None,
    metric: str | None,
    trials: int | None,
    minutes: float | None,
    allow: list[str] | None,
    batch_size: int | None,
    device: str | None,
) -> dict[str, Any]:
    """The job POST /v1/jobs takes; options not given are left to the service's defaults."""
    auto: dict[str, Any] = {"kind": "auto", "objective": objective, "dataset_id": dataset_id}
    optional = {
        "max_drop": max_drop,
        "metric": metric,
        "batch_size": batch_size,
        "device": device,
        "eval_dataset_id": eval_dataset_id,
    }
    auto |= {k: v for k, v in optional.items() if v is not None}
    budget = {k: v for k, v in {"trials": trials, "minutes": minutes}.items() if v is not None}
    if budget:
        auto["budget"] = budget
    if allow:
        auto["allow"] = allow
    return {"model_id": model_id, "passes": [auto]}


def auto_pass(job: Job) -> dict[str, Any] | None:
    passes = job.spec.get("passes")
    if (
        isinstance(passes, list)
        and len(passes) == 1
        and isinstance(passes[0], dict)
        and passes[0].get("kind") == "auto"
    ):
        return passes[0]
    return None


def search_of(job: Job) -> AutoResult | None:
    """The search's state; an empty one for a search that has not written it yet."""
    if job.result is not None and job.result.auto is not None:
        return job.result.auto
    return AutoResult() if auto_pass(job) is not None else None


def batch_of(job: Job) -> str:
    return str((auto_pass(job) or {}).get("batch_size") or 8)


def _time_left(deadline: datetime | None, now: datetime) -> str:
    if deadline is None:
        return ""
    if deadline.tzinfo is None:
        deadline = deadline.replace(tzinfo=UTC)
    seconds = (deadline - now).total_seconds()
    if seconds <= 0:
        return "time budget spent, finishing the running trials"
    return f"{math.ceil(seconds / 60)} min of its time budget left"


def progress_line(job: Job, *, now: datetime | None = None) -> str:
    """One line: trials done/running/queued/left of the budget, time left, best so far."""
    search = search_of(job)
    p = search.progress if search else None
    if p is None:
        return f"search {job.id} {job.status}: starting (preflight, first trials)"
    parts = [f"{p.done} done, {p.running} running, {p.queued} queued"]
    if p.left is not None:
        parts[0] += f", {p.left} left" + (f" of {p.budget_trials}" if p.budget_trials else "")
    if p.cached:
        parts.append(f"{p.cached} from the cache")
    left = _time_left(p.deadline_at, now or datetime.now(UTC)) if not job.done else ""
    if left:
        parts.append(left)
    if search is not None and not job.done:
        best = best_trial(search)
        parts.append("best so far: " + (_message(search, best) if best else "none qualifies yet"))
    return f"search {job.id} {job.status}: trials " + "; ".join(p for p in parts if p)


def best_trial(search: AutoResult) -> AutoTrial | None:
    """The answer's trial, when its own numbers qualify it."""
    answer = search.answer
    # With a fallback nothing qualified; `best` then names the graph trial handed back.
    if answer is None or answer.best is None or answer.fallback is not None:
        return None
    trial = next((t for t in answer.trials if t.key == answer.best), None)
    return trial if trial is not None and trial.qualifies else None


def _message(search: AutoResult, trial: AutoTrial) -> str:
    answer = search.answer
    return (answer.message if answer and answer.message else None) or trial.key


def _speed(trial: AutoTrial) -> str:
    if trial.speedup is None:
        return ""
    text = f"{trial.speedup:.2f}x"
    if trial.interval and len(trial.interval) == 2:
        text += f" [{trial.interval[0]:.2f}-{trial.interval[1]:.2f}]"
    return text + (" SLOWER" if trial.slower else "")


def trials_table(job: Job) -> Table | None:
    search = search_of(job)
    answer = search.answer if search else None
    if answer is None or not answer.trials:
        return None
    best = best_trial(search) if search else None
    pareto = set(answer.pareto)
    table = Table(title=f"trials of search {job.id}")
    table.add_column("trial", no_wrap=True)
    table.add_column("family")
    table.add_column("rung", justify="right")
    table.add_column("status")
    table.add_column(f"speedup b={batch_of(job)}", justify="right")
    table.add_column("size", justify="right")
    table.add_column("drop", justify="right")
    table.add_column("within")
    table.add_column("cached")
    table.add_column("job")
    for t in answer.trials:
        mark = " (answer)" if best is not None and t.key == best.key else ""
        if not mark and t.key in pareto:
            mark = " (pareto)"
        within = "" if t.within_tolerance is None else "yes" if t.within_tolerance else "NO"
        table.add_row(
            t.key + mark,
            t.family or "",
            "" if t.rung is None else str(t.rung),
            t.status + (f": {t.error}" if t.error else ""),
            _speed(t),
            "" if t.size_ratio is None else f"{t.size_ratio:.3f}",
            "" if t.drop is None else f"{t.drop:.4f}",
            within,
            "cached" if t.cached else "",
            t.job_id or "",
            style="red" if t.slower else None,
        )
    return table


def answer_lines(job: Job) -> list[str]:
    """The answer in words (rich markup), and why each rejected family was rejected."""
    search = search_of(job)
    answer = search.answer if search else None
    if search is None or answer is None:
        return [] if not job.done else ["the search ended without an answer"]
    # A failed search (every trial failed) has no answer: its error says why.
    lines = _final_answer(job, search) if job.done and job.status != "failed" else []
    for family, why in answer.rejected.items():
        lines.append(f"rejected {family}: {why}")
    return lines


def _final_answer(job: Job, search: AutoResult) -> list[str]:
    answer = search.answer
    assert answer is not None
    best = best_trial(search)
    if best is not None:
        lines = [
            f"[green]answer[/green]: {_message(search, best)}",
            f"  trial {best.key} (job {best.job_id}); `modelpress download {job.id}` gets it",
        ]
    elif answer.best is not None and answer.fallback is None:
        lines = [
            f"[yellow]nothing qualified[/yellow]: the search named {answer.best}, but its "
            "numbers do not show it faster than the original by the paired interval within "
            "the tolerance; keep the original"
        ]
    else:
        what = "the graph-optimized original" if answer.fallback == "graph" else "the original"
        lines = [f"[yellow]nothing qualified[/yellow]: the answer is {what}"]
        if answer.message:
            lines.append(f"  {answer.message}")
    if search.stopped in STOPPED_WORDS:
        lines.append(f"  ({STOPPED_WORDS[search.stopped]})")
    return lines
