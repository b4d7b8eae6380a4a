"""/v1/batches: many job specs submitted at once (a sweep), followed as one."""

from __future__ import annotations

from collections import defaultdict

from fastapi import APIRouter, Response
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

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
from api.errors import Problem
from api.owned import get_owned
from api.pagination import paginate
from api.removal import remove_objects
from api.schemas import BatchOut, BatchSummary, JobOut, Page
from api.submit import (
    advance_searches,
    commit_or_find_winner,
    new_batch,
    replay,
    request_hash,
    send_committed,
)
from core import jobstate, storage_keys
from core.jobspec import BatchSpec
from core.tables import FINAL_STATUSES, Batch, Job, JobStatus

router = APIRouter(prefix="/v1/batches", tags=["batches"])


@router.post("", status_code=202, response_model=BatchOut)
def create_batch(
    spec: BatchSpec,
    response: Response,
    key: WriteKey,
    session: SessionDep,
    settings: SettingsDep,
    idempotency_key: IdempotencyKey = None,
) -> BatchOut:
    """Every job spec is checked first: one bad spec refuses the whole batch (its error names
    the job by position) and no job is created."""
    hashed = request_hash(spec)
    if idempotency_key:
        existing = _find_by_idempotency_key(session, key.project_id, idempotency_key)
        if existing is not None:
            return _replay(session, existing, hashed, response)
    batch, jobs = new_batch(
        session,
        settings,
        key.project_id,
        spec,
        idempotency_key=idempotency_key,
        request_hash=hashed,
    )
    winner = commit_or_find_winner(
        session,
        lambda: _find_by_idempotency_key(session, key.project_id, idempotency_key or ""),
        jobs=jobs,
    )
    if winner is not None:
        return _replay(session, winner, hashed, response)
    send_committed(session, jobs)
    response.headers["Location"] = f"/v1/batches/{batch.id}"
    return _batch_out(session, batch)


@router.get("", response_model=Page[BatchSummary])
def list_batches(
    key: ReadKey, session: SessionDep, page_size: int = 50, page_token: str | None = None
) -> Page[BatchSummary]:
    query = select(Batch).where(Batch.project_id == key.project_id)
    rows, token = paginate(session, query, Batch, page_size=page_size, page_token=page_token)
    counts = _counts(session, [row.id for row in rows])
    return Page(items=[BatchSummary.of(row, counts[row.id]) for row in rows], next_page_token=token)


@router.get("/{batch_id}", response_model=BatchOut)
def get_batch(batch_id: str, key: ReadKey, session: SessionDep) -> BatchOut:
    return _batch_out(session, get_owned(session, Batch, batch_id, project_id=key.project_id))


@router.get("/{batch_id}/summary", response_model=BatchSummary)
async def get_batch_summary(batch_id: str, key: ReadKey) -> BatchSummary:
    """The batch's status and its jobs counted by state, without the jobs themselves: what a
    script polls while it waits for a large batch. One grouped count however many jobs the
    batch has, where the whole batch types every job (a sweep of 1,000: 1,000 jobs a read)."""

    def read(session: Session) -> BatchSummary:
        batch = get_owned(session, Batch, batch_id, project_id=key.project_id)
        return BatchSummary.of(batch, _counts(session, [batch.id])[batch.id])

    return await in_read_session(read)


@router.post("/{batch_id}/cancel", status_code=202, response_model=BatchOut)
def cancel_batch(batch_id: str, key: WriteKey, session: SessionDep) -> BatchOut:
    """Cancels every job of the batch that is queued or running; finished jobs stay as they
    are. Canceling a batch with nothing left to cancel changes nothing."""
    batch = get_owned(session, Batch, batch_id, project_id=key.project_id)
    active = (JobStatus.queued, JobStatus.running)
    jobs = session.scalars(
        select(Job).where(Job.batch_id == batch.id, Job.status.in_(active))
    ).all()
    for job in jobs:
        jobstate.request_cancel(session, job)
    session.commit()
    # Searches end now, each with the best model it found so far.
    advance_searches(session, list(jobs))
    session.expire_all()
    return _batch_out(session, batch)


@router.delete("/{batch_id}", status_code=204)
def delete_batch(
    batch_id: str, key: WriteKey, session: SessionDep, storage: StorageDep
) -> Response:
    """Deletes the batch, its jobs and everything they stored. Refused (409 `batch_active`,
    naming them) while any of its jobs is unfinished: cancel the batch first."""
    batch = get_owned(session, Batch, batch_id, project_id=key.project_id)
    # Finished jobs never run again (a retry is a new job outside the batch), so deleting them
    # first and then looking for what is left finds exactly the unfinished ones; deleting the
    # batch row would cascade to those, so then nothing is deleted at all.
    finished = session.scalars(
        select(Job.id).where(Job.batch_id == batch.id, Job.status.in_(FINAL_STATUSES))
    ).all()
    # The trials of the batch's searches go with them (the foreign key cascades).
    trials = session.scalars(select(Job.id).where(Job.parent_id.in_(finished))).all()
    session.execute(delete(Job).where(Job.id.in_(finished), Job.status.in_(FINAL_STATUSES)))
    unfinished = session.scalars(
        select(Job.id).where(Job.batch_id == batch.id).order_by(Job.created_at, Job.id)
    ).all()
    if unfinished:
        session.rollback()
        shown = ", ".join(unfinished[:10]) + (" …" if len(unfinished) > 10 else "")
        raise Problem(
            409,
            f"batch {batch_id!r} has {len(unfinished)} unfinished job(s) ({shown}); cancel the "
            f"batch (POST /v1/batches/{batch_id}/cancel), then delete it once they stopped",
            type="batch_active",
        )
    session.execute(delete(Batch).where(Batch.id == batch.id))
    session.commit()
    # The objects only after the commit: a crash in between leaves orphans for the sweeper.
    remove_objects(
        storage, [storage_keys.job_prefix(key.project_id, j) for j in [*finished, *trials]]
    )
    return Response(status_code=204)


def _find_by_idempotency_key(session: Session, project_id: str, key: str) -> Batch | None:
    return session.scalar(
        select(Batch).where(Batch.project_id == project_id, Batch.idempotency_key == key)
    )


def _replay(session: Session, existing: Batch, hashed: str, response: Response) -> BatchOut:
    replay(existing.request_hash, hashed, response, f"/v1/batches/{existing.id}")
    return _batch_out(session, existing)


def _counts(session: Session, batch_ids: list[str]) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = defaultdict(dict)
    if batch_ids:
        rows = session.execute(
            select(Job.batch_id, Job.status, func.count())
            .where(Job.batch_id.in_(batch_ids))
            .group_by(Job.batch_id, Job.status)
        ).all()
        for batch_id, status, count in rows:
            counts[str(batch_id)][status] = count
    return counts


def _batch_out(session: Session, batch: Batch) -> BatchOut:
    jobs = session.scalars(
        select(Job).where(Job.batch_id == batch.id).order_by(Job.created_at, Job.id)
    ).all()
    counts: dict[str, int] = defaultdict(int)
    for job in jobs:
        counts[job.status] += 1
    summary = BatchSummary.of(batch, counts)
    live = live_queues(session)
    return BatchOut(**summary.model_dump(), jobs=[JobOut.of(job, live_queues=live) for job in jobs])
