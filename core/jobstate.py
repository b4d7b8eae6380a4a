"""Every job state change, as a conditional UPDATE, so two processes can never both move
the same job (two workers finishing it, a cancel racing a completion).

Heartbeats, send times and the cutoffs they are judged by are read from the database
server's clock (core.dbclock), never a worker's: a worker whose clock runs hours fast or slow
neither reaps healthy jobs nor keeps a dead one alive."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from core.db import utcnow
from core.dbclock import db_utcnow
from core.tables import Job, JobKind, JobStatus

RUNNING = (JobStatus.running, JobStatus.canceling)


def claim(
    session: Session, job_id: str, worker: str, *, worker_id: str | None = None
) -> int | None:
    """queued -> running. Returns the attempt number, or None if the job is not claimable.
    `worker_id` is the claiming worker's row (core.workers), which shows the job as its own."""
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.queued, Job.attempts < Job.max_attempts)
        .values(
            status=JobStatus.running,
            attempts=Job.attempts + 1,
            started_at=now,
            heartbeat_at=db_utcnow(),
            worker=worker,
            worker_id=worker_id,
            stage="loading",
            progress=0.0,
            progress_message="claimed by worker",
            error_type=None,
            error_message=None,
            # A new attempt starts over; an earlier attempt's partial result goes.
            result=None,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return None
    attempt = session.scalar(select(Job.attempts).where(Job.id == job_id))
    return int(attempt) if attempt is not None else None


def heartbeat(session: Session, job_id: str, attempt: int) -> str | None:
    """Refresh the heartbeat; returns the job's status, or None if this attempt lost the job."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.attempts == attempt, Job.status.in_(RUNNING))
        .values(heartbeat_at=db_utcnow())
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return None
    return session.scalar(select(Job.status).where(Job.id == job_id))


def report_progress(
    session: Session, job_id: str, attempt: int, *, stage: str, progress: float, message: str
) -> bool:
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.attempts == attempt, Job.status.in_(RUNNING))
        .values(
            stage=stage,
            progress=max(0.0, min(1.0, progress)),
            progress_message=message[:2000],
            heartbeat_at=db_utcnow(),
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1  # type: ignore[attr-defined]


def record_result(session: Session, job_id: str, attempt: int, *, result: dict[str, Any]) -> bool:
    """A running attempt's partial result (e.g. the stages measured so far). `finish` replaces
    it on success and keeps it on failure, so a failed job still shows what it got done."""
    now = utcnow()
    outcome = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.attempts == attempt, Job.status.in_(RUNNING))
        .values(result=result, heartbeat_at=db_utcnow(), updated_at=now)
        .execution_options(synchronize_session=False)
    )
    return outcome.rowcount == 1  # type: ignore[attr-defined]


def finish(
    session: Session,
    job_id: str,
    attempt: int,
    *,
    status: JobStatus,
    result: dict[str, Any] | None = None,
    error_type: str | None = None,
    error_message: str | None = None,
) -> bool:
    """running|canceling -> a final state, only for the attempt that owns the job. A failed
    or canceled job keeps the partial result its attempt recorded (record_result)."""
    now = utcnow()
    values: dict[str, Any] = {"status": status, "finished_at": now, "updated_at": now}
    if status == JobStatus.succeeded:
        values.update(stage="done", progress=1.0, progress_message="finished", result=result)
    else:
        values.update(error_type=error_type, error_message=error_message)
    outcome = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.attempts == attempt, Job.status.in_(RUNNING))
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return outcome.rowcount == 1  # type: ignore[attr-defined]


def request_cancel(session: Session, job: Job) -> bool:
    """queued -> canceled at once; running -> canceling (the worker stops it).

    `job` may be a moment old: a worker can claim it between the caller's read and this
    update. Then the update matches nothing, and the job is read again and asked in the state
    it is in now, so a job that just started is still canceled, not refused."""
    # Each miss means the job moved on meanwhile (claimed, or re-queued by the reaper); it
    # cannot do so many times in a moment, so a few looks suffice.
    for _ in range(3):
        now = utcnow()
        if job.status == JobStatus.queued:
            outcome = session.execute(
                update(Job)
                .where(Job.id == job.id, Job.status == JobStatus.queued)
                .values(
                    status=JobStatus.canceled,
                    cancel_requested_at=now,
                    finished_at=now,
                    error_type="canceled",
                    error_message="canceled before it started",
                    updated_at=now,
                )
                .execution_options(synchronize_session=False)
            )
        elif job.status == JobStatus.running:
            outcome = session.execute(
                update(Job)
                .where(Job.id == job.id, Job.status == JobStatus.running)
                .values(status=JobStatus.canceling, cancel_requested_at=now, updated_at=now)
                .execution_options(synchronize_session=False)
            )
        else:
            return False
        if outcome.rowcount == 1:  # type: ignore[attr-defined]
            return True
        session.refresh(job)
    return False


def reap_stale(session: Session, *, timeout_s: float) -> list[tuple[str, str]]:
    """Jobs whose worker stopped heartbeating: re-queue while attempts remain, else fail.

    Returns (job_id, queue) of the jobs to re-send to the broker after commit.
    """
    cutoff = db_utcnow(-timeout_s)
    # Plain rows, not ORM objects: an identity-mapped Job could carry stale values.
    stale = session.execute(
        select(Job.id, Job.status, Job.attempts, Job.max_attempts, Job.queue).where(
            # A search has no worker to lose: core.autosearch moves it on.
            Job.status.in_(RUNNING),
            Job.heartbeat_at < cutoff,
            Job.kind != JobKind.search,
        )
    ).all()
    requeue: list[tuple[str, str]] = []
    now = utcnow()
    for job in stale:
        # Still stale when updated: a heartbeat since the SELECT keeps the job.
        base = update(Job).where(
            Job.id == job.id,
            Job.attempts == job.attempts,
            Job.status == job.status,
            Job.heartbeat_at < cutoff,
        )
        if job.status == JobStatus.canceling:
            values: dict[str, Any] = {
                "status": JobStatus.canceled,
                "finished_at": now,
                "error_type": "canceled",
                "error_message": "canceled; its worker stopped responding",
            }
        elif job.attempts < job.max_attempts:
            values = {
                "status": JobStatus.queued,
                "queued_at": now,
                # Sent by the caller right after the commit (mark_unsent if that fails).
                "sent_at": db_utcnow(),
                "stage": None,
                "progress": 0.0,
                "progress_message": (
                    f"attempt {job.attempts} lost its worker "
                    f"(no heartbeat for {timeout_s:.0f} s); queued again"
                ),
            }
        else:
            values = {
                "status": JobStatus.failed,
                "finished_at": now,
                "error_type": "worker_lost",
                "error_message": (
                    f"the worker stopped responding during attempt {job.attempts} of "
                    f"{job.max_attempts}; giving up"
                ),
            }
        values["updated_at"] = now
        outcome = session.execute(
            base.values(**values).execution_options(synchronize_session=False)
        )
        if outcome.rowcount == 1 and values["status"] == JobStatus.queued:  # type: ignore[attr-defined]
            requeue.append((job.id, job.queue))
    return requeue


def resend_stale_queued(
    session: Session, *, after_s: float, queues: Collection[str] | None = None
) -> list[tuple[str, str]]:
    """Queued jobs to hand to the broker (again): those it never took (sent_at is NULL: it was
    unreachable when they were queued or re-queued) and those sent more than `after_s` ago and
    still not claimed (the broker may have lost them). Marks each as sent now and returns
    (job_id, queue) to send.

    A job the broker did not lose gets a second message; that is harmless because `claim` is
    conditional: the first message to arrive runs the job, any later one finds it no longer
    queued and is dropped. Marking is conditional too, so of several reapers only one re-sends.

    With `queues` (the ones some live worker serves), a job of another queue is sent again
    only once a worker serves it: otherwise it would be sent every `after_s` until one
    appears. A job the broker never took is sent whatever its queue: that first message waits
    in the broker for the worker to come.
    """
    stale = Job.sent_at < db_utcnow(-after_s)
    if queues is not None:
        stale = stale & Job.queue.in_(sorted(queues))
    due = or_(Job.sent_at.is_(None), stale)
    waiting = session.execute(
        select(Job.id, Job.queue)
        .where(Job.status == JobStatus.queued, due, Job.kind != JobKind.search)
        .order_by(Job.queued_at, Job.id)
    ).all()
    resend: list[tuple[str, str]] = []
    for job in waiting:
        outcome = session.execute(
            update(Job)
            .where(Job.id == job.id, Job.status == JobStatus.queued, due)
            .values(sent_at=db_utcnow())
            .execution_options(synchronize_session=False)
        )
        if outcome.rowcount == 1:  # type: ignore[attr-defined]
            resend.append((job.id, job.queue))
    return resend


def mark_unsent(session: Session, job_ids: Sequence[str]) -> None:
    """The broker did not take these jobs: the reaper's next pass sends them."""
    if job_ids:
        session.execute(
            update(Job)
            .where(Job.id.in_(job_ids), Job.status == JobStatus.queued)
            .values(
                sent_at=None,
                progress_message="not yet handed to a worker: the broker is unreachable; "
                "it is sent as soon as the broker is back",
            )
            .execution_options(synchronize_session=False)
        )
