"""Retention: the artifacts of jobs that finished more than MODELPRESS_RETENTION_DAYS ago are
removed; the job row, its spec and its result numbers stay, marked `artifacts_expired_at`."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from core.db import session_scope, utcnow
from core.storage import Storage
from core.storage_keys import job_prefix
from core.tables import FINAL_STATUSES, Artifact, Job

log = logging.getLogger(__name__)

#: Jobs handled per transaction, so that a first pass over a large history holds no long lock.
_BATCH = 200


@dataclass(frozen=True)
class ExpiredJob:
    job_id: str
    project_id: str
    artifacts: int


def expire_artifacts(
    *, storage: Storage, keep_for: timedelta, now: datetime | None = None, dry_run: bool = False
) -> list[ExpiredJob]:
    """Expires the artifacts of every job that finished before `now - keep_for`, and returns
    those jobs. Rows first, objects after the commit: a crash in between leaves objects under
    a job marked expired, which the sweeper (core.sweeper) removes."""
    cutoff = (now or utcnow()) - keep_for
    expired: list[ExpiredJob] = []
    while True:
        with session_scope() as session:
            rows = session.execute(
                select(Job.id, Job.project_id)
                .where(
                    Job.status.in_(FINAL_STATUSES),
                    Job.finished_at < cutoff,
                    Job.artifacts_expired_at.is_(None),
                )
                .order_by(Job.finished_at, Job.id)
                .limit(None if dry_run else _BATCH)
            ).all()
            job_ids = [job_id for job_id, _ in rows]
            counts = _artifact_counts(session, job_ids)
            if rows and not dry_run:
                session.execute(delete(Artifact).where(Artifact.job_id.in_(job_ids)))
                # Conditional: of two workers expiring the same jobs, each job is marked once.
                session.execute(
                    update(Job)
                    .where(Job.id.in_(job_ids), Job.artifacts_expired_at.is_(None))
                    .values(artifacts_expired_at=utcnow())
                )
        batch = [
            ExpiredJob(job_id=job_id, project_id=project_id, artifacts=counts.get(job_id, 0))
            for job_id, project_id in rows
        ]
        if not dry_run:
            for job in batch:
                storage.delete_prefix(job_prefix(job.project_id, job.job_id))
        expired.extend(batch)
        if dry_run or len(rows) < _BATCH:
            return expired


def _artifact_counts(session: Session, job_ids: list[str]) -> dict[str, int]:
    if not job_ids:
        return {}
    rows = session.execute(
        select(Artifact.job_id, func.count())
        .where(Artifact.job_id.in_(job_ids))
        .group_by(Artifact.job_id)
    ).all()
    return {job_id: count for job_id, count in rows}
