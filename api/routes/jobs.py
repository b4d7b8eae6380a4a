"""/v1/jobs: submit a spec, follow it, cancel it, list its artifacts."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from api.deps import IdempotencyKey, ReadKey, SessionDep, SettingsDep, StorageDep, WriteKey
from api.errors import Problem, not_found
from api.pagination import paginate
from api.routes.artifacts import artifact_response
from api.schemas import ArtifactOut, JobOut, Page
from api.submit import new_job, replay, request_hash, send_committed
from core import jobstate
from core.db import session_factory
from core.jobspec import JobSpec
from core.models import FINAL_STATUSES, Artifact, Job, JobStatus

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

JobStatusName = Annotated[
    list[JobStatus] | None, Query(description="Only jobs in these states (repeatable).")
]


def _find_by_idempotency_key(session: SessionDep, project_id: str, key: str) -> Job | None:
    return session.scalar(
        select(Job).where(Job.project_id == project_id, Job.idempotency_key == key)
    )


def _replay(existing: Job, hashed: str, response: Response) -> JobOut:
    replay(existing.request_hash, hashed, response, f"/v1/jobs/{existing.id}")
    return JobOut.of(existing)


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
            return _replay(existing, hashed, response)

    job = new_job(
        session,
        settings,
        key.project_id,
        spec,
        loc=["body"],
        idempotency_key=idempotency_key,
        request_hash=hashed,
    )
    try:
        session.commit()
    except IntegrityError:  # a concurrent request with the same Idempotency-Key won
        session.rollback()
        existing = _find_by_idempotency_key(session, key.project_id, idempotency_key or "")
        if existing is None:
            raise
        return _replay(existing, hashed, response)
    # Only now is the row visible to a worker; the broker carries nothing but the id.
    send_committed(session, [job])
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return JobOut.of(job)


@router.get("", response_model=Page[JobOut])
def list_jobs(
    key: ReadKey,
    session: SessionDep,
    status: JobStatusName = None,
    model_id: str | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    page_size: int = 50,
    page_token: str | None = None,
) -> Page[JobOut]:
    query = select(Job).where(Job.project_id == key.project_id)
    if status:
        query = query.where(Job.status.in_([s.value for s in status]))
    if model_id:
        query = query.where(Job.model_id == model_id)
    if created_after:
        query = query.where(Job.created_at > created_after)
    if created_before:
        query = query.where(Job.created_at < created_before)
    rows, token = paginate(session, query, Job, page_size=page_size, page_token=page_token)
    return Page(items=[JobOut.of(r) for r in rows], next_page_token=token)


def get_owned_job(session: SessionDep, project_id: str, job_id: str) -> Job:
    row = session.get(Job, job_id)
    if row is None or row.project_id != project_id:
        raise not_found("job", job_id)
    return row


@router.get("/{job_id}", response_model=JobOut)
def get_job(job_id: str, key: ReadKey, session: SessionDep) -> JobOut:
    return JobOut.of(get_owned_job(session, key.project_id, job_id))


@router.post("/{job_id}/cancel", status_code=202, response_model=JobOut)
def cancel_job(job_id: str, key: WriteKey, session: SessionDep) -> JobOut:
    job = get_owned_job(session, key.project_id, job_id)
    if job.status == JobStatus.cancelling:
        return JobOut.of(job)
    if not jobstate.request_cancel(session, job):
        session.refresh(job)
        raise Problem(
            409,
            f"the job is already {job.status}; only queued or running jobs can be canceled",
            type="job-not-cancelable",
        )
    session.commit()
    session.refresh(job)
    return JobOut.of(job)


@router.get("/{job_id}/artifacts", response_model=list[ArtifactOut])
def list_job_artifacts(job_id: str, key: ReadKey, session: SessionDep) -> list[ArtifactOut]:
    job = get_owned_job(session, key.project_id, job_id)
    rows = session.scalars(
        select(Artifact).where(Artifact.job_id == job.id).order_by(Artifact.created_at)
    ).all()
    return [ArtifactOut.of(r) for r in rows]


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
    job = get_owned_job(session, key.project_id, job_id)
    row = session.scalar(
        select(Artifact)
        .where(Artifact.job_id == job.id, Artifact.kind == "report")
        .order_by(Artifact.created_at.desc())
    )
    if row is None:
        raise Problem(
            404,
            f"job {job_id!r} has no report: it is {job.status}, and a job has one once it "
            "succeeded (its stage reports are among its artifacts)",
            type="no-report",
        )
    return artifact_response(request, storage, row)


@router.post("/{job_id}/retry", status_code=202, response_model=JobOut)
def retry_job(
    job_id: str, response: Response, key: WriteKey, session: SessionDep, settings: SettingsDep
) -> JobOut:
    """A new job with the same spec as a failed or canceled one; the old job and its artifacts
    stay as they are. The new job's `retry_of` names the old one."""
    job = get_owned_job(session, key.project_id, job_id)
    if job.status not in (JobStatus.failed, JobStatus.canceled):
        raise Problem(
            409,
            f"the job is {job.status}; only failed or canceled jobs can be retried",
            type="job-not-retryable",
        )
    try:
        retry = new_job(
            session,
            settings,
            key.project_id,
            JobSpec.model_validate(job.spec),
            loc=["spec"],
            retry_of=job.id,
        )
    except Problem as exc:  # e.g. its model or dataset was deleted since
        raise Problem(
            409, f"the job cannot run again as it was: {exc.detail}", type="job-not-retryable"
        ) from exc
    session.commit()
    send_committed(session, [retry])
    response.headers["Location"] = f"/v1/jobs/{retry.id}"
    return JobOut.of(retry)


EVENT_STREAM_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Server-sent events: an `event: job` with the job (as GET /v1/jobs/{id} "
        "returns it) now and at every change of status, stage, progress or attempt. The "
        "stream ends after the job's final state, or after MODELPRESS_EVENTS_STREAM_S.",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
}


@router.get("/{job_id}/events", response_class=StreamingResponse, responses=EVENT_STREAM_DOC)
def job_events(
    job_id: str, key: ReadKey, session: SessionDep, settings: SettingsDep
) -> StreamingResponse:
    get_owned_job(session, key.project_id, job_id)
    return StreamingResponse(
        _job_events(job_id, poll_s=settings.events_poll_s, stream_s=settings.events_stream_s),
        media_type="text/event-stream",
        # Proxies must pass each event on at once rather than buffer the stream.
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


#: A comment line this often keeps proxies and load balancers from closing a quiet stream.
KEEPALIVE_S = 15.0


def _job_events(job_id: str, *, poll_s: float, stream_s: float) -> Iterator[str]:
    """The job's state whenever it changes, read from the database (the truth about a job;
    the broker knows nothing of progress). Each poll uses a short session of its own."""
    started = last_sent = time.monotonic()
    last: tuple[object, ...] | None = None
    while True:
        with session_factory()() as session:
            row = session.get(Job, job_id)
            job = JobOut.of(row) if row is not None else None
        if job is None:  # its project was deleted meanwhile
            return
        now = time.monotonic()
        state = (job.status, job.stage, job.progress.fraction, job.progress.message, job.attempts)
        if state != last:
            last, last_sent = state, now
            yield f"event: job\ndata: {job.model_dump_json()}\n\n"
        elif now - last_sent >= KEEPALIVE_S:
            last_sent = now
            yield ": keep-alive\n\n"
        if job.status in FINAL_STATUSES or now - started >= stream_s:
            return
        time.sleep(poll_s)
