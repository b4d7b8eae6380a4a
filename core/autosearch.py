"""Runs an auto search from the database: the search job (kind `search`) is never sent to a
worker; its trials are ordinary jobs (kind `trial`) that workers run and measure.

`advance` is the whole engine. It reads the search and its trials, asks the search policy
(`optimizers.auto`) what to start next, adds those trials (or reuses a cached measurement),
and ends the search when nothing is left to run, its time is up or it was canceled. It keeps
no state of its own anywhere but in the rows, so it can be called by anyone at any time:
after each trial ends (the worker that ran it), by every worker's reaper pass (which resumes
a search after a crash or a restart, and ends one whose minutes ran out), and by the API
after a submission or a cancel. Two calls at once cannot start a trial twice: a trial's
idempotency key is its search and its key, unique per project.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core import jobstate, trialcache, workers
from core.db import new_id, session_scope, utcnow
from core.dbclock import db_utcnow
from core.jobspec import JobSpec, load_stored_spec
from core.queue import send_jobs
from core.settings import Settings
from core.storage import Storage
from core.storage_keys import artifact_key, attempt_prefix
from core.tables import (
    ACTIVE_STATUSES,
    FINAL_STATUSES,
    Artifact,
    Dataset,
    Job,
    JobKind,
    JobStatus,
    StoredModel,
    Worker,
)
from optimizers.auto import Preflight, TrialOutcome, TrialPlan, answer, next_trials
from optimizers.config import AutoConfig

log = logging.getLogger(__name__)

#: Rounds of planning in one call: trials answered from the cache are final at once, so the
#: next rung can be planned in the same call.
_MAX_ROUNDS = 8


def advance(parent_id: str, *, settings: Settings, storage: Storage) -> None:
    """One step of the search `parent_id`; sends the trials it queued after its commit."""
    with session_scope() as session:
        queued = _step(session, parent_id, settings=settings, storage=storage)
    if queued:
        unsent = send_jobs(queued)
        if unsent:
            with session_scope() as session:
                jobstate.mark_unsent(session, unsent)


def advance_active(*, settings: Settings, storage: Storage) -> None:
    """Every unfinished search, one step each (the reaper's pass)."""
    with session_scope() as session:
        ids = session.scalars(
            select(Job.id).where(Job.kind == JobKind.search, Job.status.in_(ACTIVE_STATUSES))
        ).all()
    for parent_id in ids:
        try:
            advance(parent_id, settings=settings, storage=storage)
        except Exception:
            log.warning(
                "search %s: step failed; the next pass tries again", parent_id, exc_info=True
            )


def stamp_trial(session: Session, job_id: str, *, worker_id: str | None) -> None:
    """Gives a succeeded trial its cache key, from the worker that measured it."""
    job = session.get(Job, job_id)
    if job is None or job.kind != JobKind.trial or job.status != JobStatus.succeeded:
        return
    worker = session.get(Worker, worker_id) if worker_id else None
    if worker is None:
        return
    key = _trial_key(session, job, hardware=trialcache.worker_class(worker))
    if key is not None:
        job.cache_key = key


def _step(
    session: Session, parent_id: str, *, settings: Settings, storage: Storage
) -> list[tuple[str, str]]:
    parent = session.get(Job, parent_id, populate_existing=True)
    if parent is None or parent.kind != JobKind.search or parent.status in FINAL_STATUSES:
        return []
    spec = load_stored_spec(parent.spec)
    config = spec.passes[0]
    assert isinstance(config, AutoConfig)
    auto = dict((parent.result or {}).get("auto") or {})
    pre = Preflight.from_json(auto["preflight"])
    now = utcnow()
    if parent.status == JobStatus.queued:
        # Conditional, like every state change: a cancel may have come first.
        session.execute(
            update(Job)
            .where(Job.id == parent.id, Job.status == JobStatus.queued)
            .values(status=JobStatus.running, started_at=now, stage="searching", updated_at=now)
            .execution_options(synchronize_session=False)
        )
        session.refresh(parent)
        if parent.status in FINAL_STATUSES:
            session.commit()
            return []
    started = parent.started_at or now
    deadline = started + timedelta(minutes=config.budget.minutes)

    children = _children(session, parent.id)
    stop: str | None = None
    if parent.status == JobStatus.canceling:
        stop = "canceled"
    elif now >= deadline - _finish_margin(settings, config):
        stop = "budget_minutes"
    queued: list[Job] = []
    if stop is None:
        hardware = _hardware(session, parent.queue, settings)
        try:
            stop = _plan(session, parent, spec, pre, children, queued, hardware=hardware)
        except IntegrityError:
            # Another step of the same search added these trials first.
            session.rollback()
            return []
    if stop is not None:
        for child in children:
            if child.status in ACTIVE_STATUSES:
                jobstate.request_cancel(session, child)
        _finish(session, parent, spec, pre, children, stop=stop, deadline=deadline, storage=storage)
        return []
    _record_progress(session, parent, spec, pre, children, auto=auto, deadline=deadline)
    try:
        session.commit()
    except IntegrityError:
        # Another step of the same search added these trials first.
        session.rollback()
        return []
    return [(child.id, child.queue) for child in queued]


def _finish_margin(settings: Settings, config: AutoConfig) -> timedelta:
    """How long before its deadline a search ends: a reaper pass may come that much later
    than the deadline, and the search must have ended within its minutes (at most a tenth of
    them early)."""
    seconds = min(settings.reaper_interval_s + 5.0, config.budget.minutes * 6.0)
    return timedelta(seconds=seconds)


def _plan(
    session: Session,
    parent: Job,
    spec: JobSpec,
    pre: Preflight,
    children: list[Job],
    queued: list[Job],
    *,
    hardware: str | None,
) -> str | None:
    """Adds the trials the policy asks for now (to `children`, and the ones to send to
    `queued`); returns why the search is over, or None while it goes on."""
    config = spec.passes[0]
    assert isinstance(config, AutoConfig)
    for _ in range(_MAX_ROUNDS):
        budget_left = config.budget.trials - len(children)
        plans = next_trials(spec, pre, _outcomes(children), budget_left=budget_left)
        plans = plans[: max(budget_left, 0)]
        if not plans:
            if any(child.status in ACTIVE_STATUSES for child in children):
                return None
            return "finished" if budget_left > 0 else "budget_trials"
        added = [_add_trial(session, parent, spec, plan, hardware=hardware) for plan in plans]
        children.extend(added)
        queued.extend(child for child in added if child.status == JobStatus.queued)
        if queued:
            return None  # the next step comes when they end
    return None


def _answer(
    spec: JobSpec, pre: Preflight, children: Sequence[Job], *, cut_short: bool
) -> dict[str, Any]:
    """The policy's answer, each trial marked with whether its numbers came from the cache."""
    found = answer(spec, pre, _outcomes(children), cut_short=cut_short)
    cached = {child.id for child in children if (child.trial or {}).get("cached_from")}
    for entry in found.get("trials", []):
        entry["cached"] = entry.get("job_id") in cached
    return found


def _children(session: Session, parent_id: str) -> list[Job]:
    return list(
        session.scalars(
            select(Job)
            .where(Job.parent_id == parent_id)
            .order_by(Job.created_at, Job.id)
            .execution_options(populate_existing=True)
        )
    )


def _outcomes(children: Sequence[Job]) -> list[TrialOutcome]:
    outcomes = []
    for child in children:
        trial = child.trial or {}
        error = f"{child.error_type}: {child.error_message}" if child.error_type else None
        outcomes.append(
            TrialOutcome(
                key=str(trial.get("key")),
                family=str(trial.get("family")),
                rung=int(trial.get("rung") or 0),
                spec={k: v for k, v in child.spec.items() if k != "model_id"},
                job_id=child.id,
                status=str(child.status),
                result=child.result,
                error=error,
                why=trial.get("why"),
            )
        )
    return outcomes


def _add_trial(
    session: Session, parent: Job, spec: JobSpec, plan: TrialPlan, *, hardware: str | None
) -> Job:
    trial_spec = JobSpec.model_validate(
        {**plan.spec, "model_id": parent.model_id, "max_attempts": parent.max_attempts}
    )
    now = utcnow()
    trial: dict[str, Any] = {
        "key": plan.key,
        "family": plan.family,
        "rung": plan.rung,
        "why": plan.why,
    }
    child = Job(
        id=new_id("job"),
        project_id=parent.project_id,
        model_id=parent.model_id,
        spec=trial_spec.model_dump(mode="json", exclude_unset=True),
        dataset_ids=trial_spec.dataset_ids(),
        extra_model_ids=[],
        queue=parent.queue,
        kind=JobKind.trial,
        parent_id=parent.id,
        trial=trial,
        status=JobStatus.queued,
        progress=0.0,
        progress_message="waiting for a worker",
        attempts=0,
        max_attempts=parent.max_attempts,
        created_at=now,
        queued_at=now,
        sent_at=db_utcnow(),
        # One trial per key and search, whoever adds it.
        idempotency_key=f"trial:{parent.id}:{plan.key}",
    )
    key = _trial_key(session, child, hardware=hardware) if hardware else None
    source = trialcache.find(session, project_id=parent.project_id, key=key) if key else None
    if source is not None:
        trial.update(cached_from=source.id, cache_key=key)
        child.trial = trial
        child.status = JobStatus.succeeded
        child.result = source.result
        child.stage = "done"
        child.progress = 1.0
        child.progress_message = f"measured before: the result of {source.id} on the same inputs"
        child.started_at = now
        child.finished_at = now
        child.sent_at = None
    session.add(child)
    session.flush()
    return child


def _trial_key(session: Session, job: Job, *, hardware: str) -> str | None:
    model = session.get(StoredModel, job.model_id) if job.model_id else None
    if model is None:
        return None
    datasets = {
        row.id: row.sha256
        for row in session.scalars(select(Dataset).where(Dataset.id.in_(job.dataset_ids or [])))
    }
    if set(datasets) != set(job.dataset_ids or []):
        return None
    return trialcache.cache_key(
        model_sha256=model.sha256, dataset_sha256=datasets, spec=job.spec, hardware=hardware
    )


def _hardware(session: Session, queue: str, settings: Settings) -> str | None:
    """The one hardware class of the live workers of `queue`; None (no cache lookup) when
    none is live or they differ: a result is reused only where it would be measured again."""
    live = workers.live_rows(session, timeout_s=settings.heartbeat_timeout_s)
    classes = {trialcache.worker_class(row) for row in live if queue in (row.queues or [])}
    return classes.pop() if len(classes) == 1 else None


def _record_progress(
    session: Session,
    parent: Job,
    spec: JobSpec,
    pre: Preflight,
    children: Sequence[Job],
    *,
    auto: dict[str, Any],
    deadline: datetime,
) -> None:
    config = spec.passes[0]
    assert isinstance(config, AutoConfig)
    progress = _progress(config, children, started=parent.started_at, deadline=deadline)
    # What the search would answer if it stopped now.
    found = _answer(spec, pre, children, cut_short=True)
    done = progress["done"]
    best = found.get("message") if found.get("best") else "none yet"
    now = utcnow()
    # Conditional: a search another step ended (or a cancel) keeps what that wrote.
    session.execute(
        update(Job)
        .where(Job.id == parent.id, Job.status == JobStatus.running)
        .values(
            result={"auto": {**auto, "progress": progress, "stopped": None, "answer": found}},
            progress=min(0.99, done / max(config.budget.trials, 1)),
            progress_message=(
                f"{done} of at most {config.budget.trials} trials done, "
                f"{progress['running']} running, {progress['queued']} queued; "
                f"best so far: {best}"
            )[:2000],
            heartbeat_at=db_utcnow(),
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )


def _progress(
    config: AutoConfig, children: Sequence[Job], *, started: datetime | None, deadline: datetime
) -> dict[str, Any]:
    status = [child.status for child in children]
    return {
        "done": sum(s in FINAL_STATUSES for s in status),
        "running": sum(s in (JobStatus.running, JobStatus.canceling) for s in status),
        "queued": status.count(JobStatus.queued),
        "left": max(config.budget.trials - len(children), 0),
        "cached": sum(bool((child.trial or {}).get("cached_from")) for child in children),
        "budget_trials": config.budget.trials,
        "minutes": config.budget.minutes,
        "started_at": started.isoformat() if started else None,
        "deadline_at": deadline.isoformat(),
    }


def _finish(
    session: Session,
    parent: Job,
    spec: JobSpec,
    pre: Preflight,
    children: Sequence[Job],
    *,
    stop: str,
    deadline: datetime,
    storage: Storage,
) -> None:
    """Ends the search with its answer: the best trial's model copied as the search's own
    `model` artifact (the original when nothing qualified), the numbers of that trial, and
    every trial's numbers and the reasons in `result.auto`."""
    config = spec.passes[0]
    assert isinstance(config, AutoConfig)
    outcomes = _outcomes(children)
    found = _answer(spec, pre, children, cut_short=stop in ("canceled", "budget_minutes"))
    auto = dict((parent.result or {}).get("auto") or {})
    result: dict[str, Any] = {
        "auto": {
            **auto,
            "progress": _progress(config, children, started=parent.started_at, deadline=deadline),
            "stopped": stop,
            "answer": found,
        }
    }
    prefix = attempt_prefix(parent.project_id, parent.id, max(parent.attempts, 1))
    copies: list[Artifact] = []
    best = _best_job(session, children, found)
    if best is not None:
        source = _measured(session, best)
        for key in ("metrics", "fidelity", "comparison", "notes", "passes", "stages", "source"):
            if isinstance(best.result, dict) and key in best.result:
                result[key] = best.result[key]
        # The model, and its provenance manifest: the inputs' hashes, the recipe and a spec
        # that makes the same model again.
        kept = session.scalars(
            select(Artifact).where(
                Artifact.job_id == source.id, Artifact.kind.in_(("model", "provenance"))
            )
        ).all()
        copies = [_copy_artifact(storage, row, parent=parent, prefix=prefix) for row in kept]
    succeeded = any(child.status == JobStatus.succeeded for child in children)
    # Stopped early (canceled, out of time), the best so far may be the original itself; a
    # search whose every trial ran and failed has no answer at all.
    answered = succeeded or stop in ("canceled", "budget_minutes")
    if best is None and answered:
        original = _copy_original(session, storage, parent=parent, prefix=prefix)
        copies = [original] if original is not None else []
    if stop == "canceled":
        status, error_type, error_message = (
            JobStatus.canceled,
            "canceled",
            "canceled by request; the answer is the best model found before",
        )
    elif answered:
        status, error_type, error_message = JobStatus.succeeded, None, None
    else:
        status, error_type = JobStatus.failed, "no_trial_succeeded"
        reasons = (
            "; ".join(f"{o.key}: {o.error}" for o in outcomes if o.error is not None)
            or "no trial ran"
        )
        error_message = f"every trial failed, so there is no measured model: {reasons}"[:2000]
    now = utcnow()
    values: dict[str, Any] = {
        "status": status,
        "result": result,
        "finished_at": now,
        "updated_at": now,
        "stage": "done",
        "progress": 1.0,
        "progress_message": str(found.get("message") or "finished")[:2000],
        "error_type": error_type,
        "error_message": error_message,
    }
    if parent.started_at is None:
        values["started_at"] = now
    outcome = session.execute(
        update(Job)
        .where(Job.id == parent.id, Job.status.in_(ACTIVE_STATUSES))
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if outcome.rowcount != 1:  # type: ignore[attr-defined]
        session.rollback()
        return
    session.add_all(copies)
    session.commit()
    log.info("search %s: %s (%s)", parent.id, status, stop)


def _best_job(session: Session, children: Sequence[Job], found: dict[str, Any]) -> Job | None:
    best_id = found.get("best_job_id")
    if not best_id:
        return None
    return next((child for child in children if child.id == best_id), None)


def _measured(session: Session, trial: Job) -> Job:
    """The job whose files hold a trial's model: itself, or the trial it was cached from."""
    source_id = (trial.trial or {}).get("cached_from")
    source = session.get(Job, source_id) if source_id else None
    return source or trial


def _copy_artifact(storage: Storage, row: Artifact, *, parent: Job, prefix: str) -> Artifact:
    """The search's own copy of a trial's file: deleting a trial (or the search a cached
    result came from) never takes the answer with it."""
    key = artifact_key(prefix, row.name)
    _copy_object(storage, row.storage_key, key)
    return Artifact(
        id=new_id("art"),
        project_id=parent.project_id,
        job_id=parent.id,
        kind=row.kind,
        name=row.name,
        content_type=row.content_type,
        sha256=row.sha256,
        size_bytes=row.size_bytes,
        storage_key=key,
    )


def _copy_original(
    session: Session, storage: Storage, *, parent: Job, prefix: str
) -> Artifact | None:
    model = session.get(StoredModel, parent.model_id) if parent.model_id else None
    if model is None:
        return None
    name = f"original-{PurePosixPath(model.storage_key).name}"
    key = artifact_key(prefix, name)
    _copy_object(storage, model.storage_key, key)
    return Artifact(
        id=new_id("art"),
        project_id=parent.project_id,
        job_id=parent.id,
        kind="model",
        name=name,
        content_type="application/octet-stream",
        sha256=model.sha256,
        size_bytes=model.size_bytes,
        storage_key=key,
    )


def _copy_object(storage: Storage, source: str, dest: str) -> None:
    with tempfile.TemporaryDirectory(prefix="search-") as tmp:
        path = storage.fetch_to(source, Path(tmp) / "file")
        storage.put_file(dest, path)
