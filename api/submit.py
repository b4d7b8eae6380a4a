"""Turning a job spec into a queued job: the checks against this project's models and datasets,
the row, and the broker message after commit. Used by single jobs, batches and retries."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

from fastapi import Response
from pydantic import BaseModel
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.deps import live_queues
from api.errors import Problem, answered_as, field_error
from api.owned import find_owned
from core.autosearch import advance
from core.db import new_id, utcnow
from core.dbclock import db_utcnow
from core.inuse import InputGone, confirm_inputs
from core.jobspec import BatchSpec, JobSpec
from core.jobstate import mark_unsent
from core.queue import send_jobs
from core.settings import Settings, get_settings
from core.storage import get_storage
from core.tables import Batch, Dataset, Job, JobKind, JobStatus, StoredModel
from optimizers.auto.preflight import preflight
from optimizers.checks import check_spec
from optimizers.config import AutoConfig
from optimizers.results import DatasetInfo, ModelInfo

log = logging.getLogger(__name__)

Loc = list[str | int]
Row = TypeVar("Row")


def request_hash(body: BaseModel) -> str:
    """What an Idempotency-Key is bound to: the request body, canonically encoded."""
    canonical = json.dumps(body.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def replay(stored_hash: str | None, hashed: str, response: Response, location: str) -> None:
    """A request repeated with an Idempotency-Key already used: the same body gets the first
    answer (marked as replayed); another body is refused."""
    if stored_hash != hashed:
        raise Problem(
            422,
            "this Idempotency-Key was already used with a different request body",
            type="idempotency_key_reused",
        )
    response.headers["Location"] = location
    response.headers["Idempotent-Replayed"] = "true"


def commit_or_find_winner(
    session: Session, find_winner: Callable[[], Row | None], *, jobs: list[Job]
) -> Row | None:
    """Commits the new rows; None when that worked. When a concurrent request with the same
    Idempotency-Key committed first (the unique constraint refused ours), its row: the caller
    answers with that one, as a replay."""
    try:
        commit_jobs(session, jobs)
    except IntegrityError:
        winner = find_winner()
        if winner is None:
            raise
        return winner
    return None


def commit_jobs(session: Session, jobs: list[Job]) -> None:
    """Commits new jobs once every model and dataset they read is locked and still there
    (core.inuse explains the order against a concurrent deletion). A job whose input was
    deleted meanwhile is refused like a spec naming an unknown model: nothing is queued."""
    try:
        confirm_inputs(session, jobs)
        session.commit()
    except InputGone as exc:
        session.rollback()
        raise field_error(["body"], str(exc)) from exc
    except IntegrityError:
        session.rollback()
        # A job's model_id is a foreign key: a model deleted at the same moment can fail the
        # INSERT itself, before the locks are reached.
        for job in jobs:
            if (
                job.model_id
                and find_owned(session, StoredModel, job.model_id, project_id=job.project_id)
                is None
            ):
                raise field_error(["body"], str(InputGone("model", job.model_id))) from None
        raise


def new_job(
    session: Session,
    settings: Settings,
    project_id: str,
    spec: JobSpec,
    *,
    loc: Loc,
    **columns: Any,
) -> Job:
    """A queued job for `spec`, checked against the project's models and datasets and added to
    the session (not committed). A field error points at `loc` + the field within the spec."""
    model = find_owned(session, StoredModel, spec.model_id, project_id=project_id)
    if model is None:
        raise field_error([*loc, "model_id"], f"no model {spec.model_id!r} in this project")
    datasets: dict[str, DatasetInfo] = {}
    for dataset_id in spec.dataset_ids():
        row = find_owned(session, Dataset, dataset_id, project_id=project_id)
        if row is None:
            raise field_error(loc, f"no dataset {dataset_id!r} in this project")
        datasets[dataset_id] = DatasetInfo.model_validate(row.info)
    models = _extra_models(session, project_id, spec, loc)
    # A spec in a batch names its place in the request (`body.jobs.2: ...`).
    where = "" if loc == ["body"] else f"{'.'.join(str(p) for p in loc)}: "
    search: dict[str, Any] = {}
    with answered_as(detail_prefix=where):
        info = ModelInfo.model_validate(model.info)
        check_spec(info, spec, datasets, models=models)
        auto = spec.passes[0]
        if isinstance(auto, AutoConfig):
            # Before any worker time: a model the search cannot help fails here, with reasons.
            found = preflight(info, datasets, spec, live_queues=live_queues(session))
            search = _search_columns(auto, found.to_json())

    now = utcnow()
    values: dict[str, Any] = dict(
        id=new_id("job"),
        project_id=project_id,
        model_id=model.id,
        # What the user set, not the defaults filled in: a dump with every default does not
        # validate again for every pass (e.g. a structured prune with magnitude's `sparsity`).
        spec=spec.model_dump(mode="json", exclude_unset=True),
        dataset_ids=list(datasets),
        extra_model_ids=list(models),
        queue="gpu" if spec.benchmark.device == "cuda" else "cpu",
        status=JobStatus.queued,
        progress=0.0,
        progress_message="waiting for a worker",
        attempts=0,
        max_attempts=spec.max_attempts or settings.max_attempts,
        created_at=now,
        queued_at=now,
        # Sent right after the commit; set to NULL (not sent) if the broker does not take it.
        sent_at=db_utcnow(),
    )
    job = Job(**(values | search | columns))
    session.add(job)
    return job


def _search_columns(auto: AutoConfig, found: dict[str, Any]) -> dict[str, Any]:
    """An auto search's row: never sent to a worker (core.autosearch runs its trials)."""
    return dict(
        kind=JobKind.search,
        queue="gpu" if auto.device == "cuda" else "cpu",
        sent_at=None,
        progress_message="preflight passed; the first trials start now",
        result={"auto": {"preflight": found, "progress": None, "stopped": None, "answer": None}},
    )


def new_batch(
    session: Session,
    settings: Settings,
    project_id: str,
    spec: BatchSpec,
    *,
    idempotency_key: str | None = None,
    request_hash: str | None = None,
) -> tuple[Batch, list[Job]]:
    """A batch and its queued jobs, every spec checked first (an error names the job by its
    index, `body.jobs.N`), added to the session (not committed)."""
    batch = Batch(
        id=new_id("bat"),
        project_id=project_id,
        name=spec.name,
        idempotency_key=idempotency_key,
        request_hash=request_hash,
        created_at=utcnow(),
    )
    session.add(batch)
    jobs = [
        new_job(
            session,
            settings,
            project_id,
            job_spec,
            loc=["body", "jobs", index],
            batch_id=batch.id,
            # Each job a microsecond after the one before: a batch lists in the order given.
            created_at=batch.created_at + timedelta(microseconds=index),
        )
        for index, job_spec in enumerate(spec.jobs)
    ]
    return batch, jobs


def _extra_models(
    session: Session, project_id: str, spec: JobSpec, loc: Loc
) -> dict[str, ModelInfo]:
    """The other models the passes read (distillation students), each of this project."""
    found: dict[str, ModelInfo] = {}
    for index, config in enumerate(spec.passes):
        for model_id in config.model_ids():
            if model_id in found:
                continue
            row = find_owned(session, StoredModel, model_id, project_id=project_id)
            if row is None:
                raise field_error(
                    [*loc, "passes", index, "student", "model_id"],
                    f"no model {model_id!r} in this project",
                )
            found[model_id] = ModelInfo.model_validate(row.info)
    return found


def send_committed(session: Session, jobs: list[Job]) -> None:
    """Hands committed jobs to the broker; only the id travels. When the broker is down this
    costs one failed send, not one per job: the jobs it did not take stay queued, marked as
    not sent, and the reaper (worker.reaper) sends them as soon as the broker is back."""
    unsent = send_jobs([(job.id, job.queue) for job in jobs if job.kind != JobKind.search])
    if unsent:
        mark_unsent(session, unsent)
        session.commit()
        for job in jobs:
            if job.id in unsent:  # the answer shows the job as the database now has it
                session.expire(job)
    advance_searches(session, jobs)


def advance_searches(session: Session, jobs: list[Job]) -> None:
    """The searches among `jobs` take a step right after their commit (or their cancel): a
    new search queues and sends its first trials, a canceled one ends with its best so far. A
    step that fails here is taken by the next reaper pass of any worker."""
    for job in jobs:
        if job.kind != JobKind.search:
            continue
        try:
            advance(job.id, settings=get_settings(), storage=get_storage())
        except Exception:
            log.warning("search %s: first step failed; a worker takes it", job.id, exc_info=True)
        session.expire(job)
