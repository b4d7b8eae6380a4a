"""/v1/jobs: submit a spec, follow it, cancel it, list its artifacts."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any, TypeVar
from weakref import WeakKeyDictionary

import anyio
import anyio.to_thread
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.sse import EventSourceResponse, ServerSentEvent
from pydantic import AfterValidator, AwareDatetime
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from api import jobactions
from api.deps import (
    IdempotencyKey,
    ReadKey,
    SessionDep,
    SettingsDep,
    StorageDep,
    WriteKey,
    in_read_session,
    live_queues,
)
from api.downloads import stored_file_response
from api.errors import Problem, not_found
from api.owned import get_owned
from api.pagination import as_utc, paginate
from api.removal import remove_objects
from api.schemas import ArtifactOut, JobOut, Page
from api.submit import (
    commit_or_find_winner,
    new_job,
    replay,
    request_hash,
    send_committed,
)
from core import storage_keys
from core.db import session_factory
from core.jobspec import JobSpec
from core.settings import get_settings
from core.tables import FINAL_STATUSES, Artifact, Job, JobKind, JobStatus

T = TypeVar("T")

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

JobStatusName = Annotated[
    list[JobStatus] | None, Query(description="Only jobs in these states (repeatable).")
]


#: A time without a time zone names no instant; a 422 says so rather than guess one.
CreatedBound = Annotated[
    Annotated[AwareDatetime, AfterValidator(as_utc)] | None,
    Query(description="ISO 8601 with a time zone, e.g. 2026-11-29T12:00:00Z."),
]


def _find_by_idempotency_key(session: SessionDep, project_id: str, key: str) -> Job | None:
    return session.scalar(
        select(Job).where(Job.project_id == project_id, Job.idempotency_key == key)
    )


def _out(session: Session, job: Job) -> JobOut:
    return JobOut.of(job, live_queues=live_queues(session))


def _replay(session: Session, existing: Job, hashed: str, response: Response) -> JobOut:
    replay(existing.request_hash, hashed, response, f"/v1/jobs/{existing.id}")
    return _out(session, existing)


@router.post("", status_code=202, response_model=JobOut)
def create_job(
    spec: JobSpec,
    response: Response,
    key: WriteKey,
    session: SessionDep,
    settings: SettingsDep,
    idempotency_key: IdempotencyKey = None,
) -> JobOut:
    hashed = request_hash(spec)
    if idempotency_key:
        existing = _find_by_idempotency_key(session, key.project_id, idempotency_key)
        if existing is not None:
            return _replay(session, existing, hashed, response)

    job = new_job(
        session,
        settings,
        key.project_id,
        spec,
        loc=["body"],
        idempotency_key=idempotency_key,
        request_hash=hashed,
    )
    winner = commit_or_find_winner(
        session,
        lambda: _find_by_idempotency_key(session, key.project_id, idempotency_key or ""),
        jobs=[job],
    )
    if winner is not None:
        return _replay(session, winner, hashed, response)
    # Only now is the row visible to a worker; the broker carries nothing but the id.
    send_committed(session, [job])
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return _out(session, job)


@router.get("", response_model=Page[JobOut])
async def list_jobs(
    key: ReadKey,
    status: JobStatusName = None,
    model_id: str | None = None,
    batch_id: Annotated[str | None, Query(description="Only the jobs of this batch.")] = None,
    parent_id: Annotated[
        str | None,
        Query(description="Only the trials of this auto search (trials are listed only so)."),
    ] = None,
    created_after: CreatedBound = None,
    created_before: CreatedBound = None,
    page_size: int = 50,
    page_token: str | None = None,
) -> Page[JobOut]:
    query = select(Job).where(Job.project_id == key.project_id)
    # A search's trials would bury the jobs people submitted: they are listed by their search.
    if parent_id:
        query = query.where(Job.parent_id == parent_id)
    else:
        query = query.where(Job.kind != JobKind.trial)
    if status:
        query = query.where(Job.status.in_([s.value for s in status]))
    if model_id:
        query = query.where(Job.model_id == model_id)
    if batch_id:
        query = query.where(Job.batch_id == batch_id)
    if created_after:
        query = query.where(Job.created_at > created_after)
    if created_before:
        query = query.where(Job.created_at < created_before)

    def read(session: Session) -> Page[JobOut]:
        rows, token = paginate(session, query, Job, page_size=page_size, page_token=page_token)
        live = live_queues(session)
        return Page(items=[JobOut.of(r, live_queues=live) for r in rows], next_page_token=token)

    return await in_read_session(read)


@router.get("/{job_id}", response_model=JobOut)
async def get_job(job_id: str, key: ReadKey) -> JobOut:
    return await in_read_session(
        lambda session: _out(session, get_owned(session, Job, job_id, project_id=key.project_id))
    )


@router.post("/{job_id}/cancel", status_code=202, response_model=JobOut)
def cancel_job(job_id: str, key: WriteKey, session: SessionDep) -> JobOut:
    job = get_owned(session, Job, job_id, project_id=key.project_id)
    return _out(session, jobactions.cancel(session, job))


@router.delete("/{job_id}", status_code=204)
def delete_job(job_id: str, key: WriteKey, session: SessionDep, storage: StorageDep) -> Response:
    """Deletes a finished job, its artifacts and everything it stored. An unfinished job is
    refused (409 `job_active`): cancel it first. Jobs that retried it keep their own rows."""
    job = get_owned(session, Job, job_id, project_id=key.project_id)
    if job.kind == JobKind.trial:
        raise Problem(
            409,
            f"this job is a trial of the auto search {job.parent_id}; delete the search, "
            "which takes its trials with it",
            type="job_is_trial",
        )
    # A search's trials go with it (the foreign key cascades); their files too.
    trials = list(session.scalars(select(Job.id).where(Job.parent_id == job.id)))
    # Conditional: only a finished job goes, whatever happened since it was read.
    deleted = session.execute(
        delete(Job).where(Job.id == job.id, Job.status.in_(FINAL_STATUSES))
    ).rowcount  # type: ignore[attr-defined]
    if not deleted:
        session.rollback()
        current = session.get(Job, job_id)
        if current is None:  # deleted by another request meanwhile
            raise not_found("job", job_id)
        raise job_active(current)
    session.commit()
    # The objects only after the commit: a crash in between leaves orphans for the sweeper.
    remove_objects(
        storage, [storage_keys.job_prefix(key.project_id, one) for one in [job_id, *trials]]
    )
    return Response(status_code=204)


def artifacts_expired(job: Job) -> Problem:
    assert job.artifacts_expired_at is not None
    return Problem(
        410,
        f"the artifacts of job {job.id!r} were removed on "
        f"{job.artifacts_expired_at:%Y-%m-%d %H:%M} UTC by the retention policy "
        "(MODELPRESS_RETENTION_DAYS); the job and its result numbers are kept",
        type="artifacts_expired",
    )


def job_active(job: Job) -> Problem:
    return Problem(
        409,
        f"job {job.id!r} is {job.status}; cancel it (POST /v1/jobs/{job.id}/cancel) and delete "
        "it once it is canceled",
        type="job_active",
    )


@router.get("/{job_id}/artifacts", response_model=list[ArtifactOut])
def list_job_artifacts(job_id: str, key: ReadKey, session: SessionDep) -> list[ArtifactOut]:
    job = get_owned(session, Job, job_id, project_id=key.project_id)
    rows = session.scalars(
        select(Artifact).where(Artifact.job_id == job.id).order_by(Artifact.created_at)
    ).all()
    return [ArtifactOut.of(r) for r in rows]


def _latest_artifact(session: Session, job: Job, kind: str) -> Artifact | None:
    """The job's newest artifact of `kind`; a 410 once retention removed the job's files."""
    row = session.scalar(
        select(Artifact)
        .where(Artifact.job_id == job.id, Artifact.kind == kind)
        .order_by(Artifact.created_at.desc())
    )
    if row is None and job.artifacts_expired_at is not None:
        raise artifacts_expired(job)
    return row


@router.get(
    "/{job_id}/report",
    response_class=Response,
    responses={
        200: {
            "description": "The job's report (`report.json`): spec, metrics, notes, stages.",
            "content": {"application/json": {"schema": {"type": "object"}}},
        }
    },
)
def get_job_report(
    job_id: str, request: Request, key: ReadKey, session: SessionDep, storage: StorageDep
) -> Response:
    """The report artifact of a succeeded job, served like any artifact (ETag, Range)."""
    job = get_owned(session, Job, job_id, project_id=key.project_id)
    row = _latest_artifact(session, job, "report")
    if row is None:
        raise Problem(
            404,
            f"job {job_id!r} has no report: it is {job.status}, and a job has one once it "
            "succeeded (its stage reports are among its artifacts)",
            type="no_report",
        )
    return stored_file_response(request, storage, row)


@router.get(
    "/{job_id}/provenance",
    response_class=Response,
    responses={
        200: {
            "description": "The job's provenance manifest (`provenance.json`): the sha256 of "
            "what it read and produced, its recipe, versions, hardware and a spec that "
            "submits it again.",
            "content": {"application/json": {"schema": {"type": "object"}}},
        }
    },
)
def get_job_provenance(
    job_id: str, request: Request, key: ReadKey, session: SessionDep, storage: StorageDep
) -> Response:
    """The provenance artifact of a succeeded job, served like any artifact (ETag, Range)."""
    job = get_owned(session, Job, job_id, project_id=key.project_id)
    row = _latest_artifact(session, job, "provenance")
    if row is None:
        raise Problem(
            404,
            f"job {job_id!r} has no provenance manifest: it is {job.status}, and a job has "
            "one once it succeeded (jobs that succeeded before manifests existed have none)",
            type="no_provenance",
        )
    return stored_file_response(request, storage, row)


@router.post("/{job_id}/retry", status_code=202, response_model=JobOut)
def retry_job(
    job_id: str, response: Response, key: WriteKey, session: SessionDep, settings: SettingsDep
) -> JobOut:
    """A new job with the same spec as a failed or canceled one; the old job and its artifacts
    stay as they are. The new job's `retry_of` names the old one."""
    job = get_owned(session, Job, job_id, project_id=key.project_id)
    retry = jobactions.retry(session, settings, job)
    response.headers["Location"] = f"/v1/jobs/{retry.id}"
    return _out(session, retry)


EVENT_STREAM_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Server-sent events: an `event: job` with the job (as GET /v1/jobs/{id} "
        "returns it) now and at every change of status, stage, progress or attempt. The "
        "stream ends after the job's final state, or after MODELPRESS_EVENTS_STREAM_S.",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
}

#: Worker threads (and so database connections) that all of a process's event streams share
#: for their reads, however many streams are open: the other routes keep the rest.
EVENT_STREAM_READERS = 4
_stream_readers: WeakKeyDictionary[asyncio.AbstractEventLoop, anyio.CapacityLimiter] = (
    WeakKeyDictionary()
)


def _readers() -> anyio.CapacityLimiter:
    # A limiter belongs to the event loop it was made in (each test client runs its own).
    loop = asyncio.get_running_loop()
    limiter = _stream_readers.get(loop)
    if limiter is None:
        limiter = _stream_readers[loop] = anyio.CapacityLimiter(EVENT_STREAM_READERS)
    return limiter


async def _read(function: Callable[[str], T], job_id: str) -> T:
    return await anyio.to_thread.run_sync(function, job_id, limiter=_readers())


def _project_of(job_id: str) -> str | None:
    with session_factory()() as session:
        return session.scalar(select(Job.project_id).where(Job.id == job_id))


def _state_of(job_id: str) -> tuple[object, ...] | None:
    """The fields whose change is worth an event; for a queued job, also whether a live worker
    serves its queue."""
    with session_factory()() as session:
        row = session.execute(
            select(
                Job.status, Job.stage, Job.progress, Job.progress_message, Job.attempts, Job.queue
            ).where(Job.id == job_id)
        ).one_or_none()
        if row is None:
            return None
        waiting = row.status == JobStatus.queued and row.queue not in live_queues(session)
    return (*tuple(row), waiting)


def _job_of(job_id: str) -> JobOut | None:
    with session_factory()() as session:
        row = session.get(Job, job_id)
        return None if row is None else _out(session, row)


async def _visible_job_id(job_id: str, key: ReadKey) -> str:
    """The 404 comes before the stream starts (after it, the status is already sent)."""
    if await _read(_project_of, job_id) != key.project_id:
        raise not_found("job", job_id)
    return job_id


@router.get("/{job_id}/events", response_class=EventSourceResponse, responses=EVENT_STREAM_DOC)
async def job_events(
    job_id: str, visible: Annotated[str, Depends(_visible_job_id)]
) -> AsyncIterator[ServerSentEvent]:
    """The job's state whenever it changes, read from the database (the truth about a job;
    the broker knows nothing of progress). Between reads the stream holds no thread and no
    database connection; each read is one short query in a session of its own. FastAPI adds a
    `: ping` comment to a quiet stream every 15 s."""
    settings = get_settings()
    started = time.monotonic()
    last: tuple[object, ...] | None = None
    first_poll = True
    while True:
        state = await _read(_state_of, visible)
        if state is None:  # its project was deleted meanwhile
            return
        if state != last:
            job = await _read(_job_of, visible)
            if job is None:
                return
            progress = job.progress
            last = (
                job.status,
                job.stage,
                progress.fraction,
                progress.message,
                job.attempts,
                job.queue,
                job.waiting_for is not None,
            )
            yield ServerSentEvent(event="job", raw_data=job.model_dump_json())
            if job.status in FINAL_STATUSES:
                return
        if time.monotonic() - started >= settings.events_stream_s:
            return
        # Streams opened together (a dashboard, clients reconnecting after a restart) would
        # all read in the same instant of every interval; a random first wait spreads them.
        await anyio.sleep(settings.events_poll_s * (random.random() if first_poll else 1.0))
        first_poll = False
