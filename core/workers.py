"""Workers as they report themselves (the `workers` table): registration at start, the
heartbeat, the clean stop, and what the API and the reaper read from it: which queues some
live worker serves, and why a queued job waits.

Live means a heartbeat within MODELPRESS_HEARTBEAT_TIMEOUT_S by the database's clock
(core.dbclock), the same rule the reaper applies to jobs."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from core.db import utcnow
from core.dbclock import db_utcnow
from core.tables import Job, JobStatus, Worker

_RUNNING = (JobStatus.running, JobStatus.canceling)


class WorkerState(enum.StrEnum):
    live = "live"
    #: It stopped cleanly (its shutdown marked it).
    stopped = "stopped"
    #: Its heartbeat stopped without a clean stop: killed, crashed, or cut off the database.
    dead = "dead"


@dataclass(frozen=True)
class Registration:
    """What a worker says about itself when it starts."""

    id: str
    name: str
    host: str
    pid: int
    queues: list[str]
    refused: dict[str, str]
    cores: list[int]
    device: dict[str, Any]
    versions: dict[str, str]


def register(session: Session, worker: Registration) -> None:
    """Adds the worker's row (or brings back one pruned while the worker was cut off)."""
    row = session.get(Worker, worker.id)
    if row is None:
        row = Worker(id=worker.id, started_at=utcnow())
        session.add(row)
    row.name = worker.name
    row.host = worker.host
    row.pid = worker.pid
    row.queues = list(worker.queues)
    row.refused = dict(worker.refused)
    row.cores = list(worker.cores)
    row.device = dict(worker.device)
    row.versions = dict(worker.versions)
    row.current_job_id = None
    row.stopped_at = None
    row.heartbeat_at = db_utcnow()
    session.flush()


def beat(session: Session, worker_id: str) -> bool:
    """Refreshes the heartbeat and the current job (read from the jobs table, the truth about
    which attempt holds which job). False when the row is gone: the caller registers again."""
    current = (
        select(Job.id)
        .where(Job.worker_id == worker_id, Job.status.in_(_RUNNING))
        .order_by(Job.started_at.desc())
        .limit(1)
        .scalar_subquery()
    )
    result = session.execute(
        update(Worker)
        .where(Worker.id == worker_id)
        .values(heartbeat_at=db_utcnow(), current_job_id=current, stopped_at=None)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1  # type: ignore[attr-defined]


def retire(session: Session, worker_id: str) -> None:
    """A clean stop: listed as stopped, serving nothing, from now on."""
    session.execute(
        update(Worker)
        .where(Worker.id == worker_id)
        .values(stopped_at=db_utcnow(), current_job_id=None)
        .execution_options(synchronize_session=False)
    )


def _live(timeout_s: float) -> Any:
    return (Worker.stopped_at.is_(None)) & (Worker.heartbeat_at >= db_utcnow(-timeout_s))


def live_rows(session: Session, *, timeout_s: float) -> list[Worker]:
    """The live workers' rows."""
    return list(session.scalars(select(Worker).where(_live(timeout_s))))


def live_queues(session: Session, *, timeout_s: float) -> frozenset[str]:
    """The queues that at least one live worker consumes."""
    rows = session.scalars(select(Worker.queues).where(_live(timeout_s))).all()
    return frozenset(queue for queues in rows for queue in queues or [])


def waiting_for(*, status: str, queue: str, live: Iterable[str]) -> dict[str, str] | None:
    """Why a queued job cannot start now, or None. Only the absence of any worker for its
    queue counts: a job behind others on a served queue is simply queued."""
    if status != JobStatus.queued or queue in set(live):
        return None
    return {"queue": queue, "reason": f"no live worker serves the {queue!r} queue"}


@dataclass(frozen=True)
class Listed:
    row: Worker
    state: WorkerState
    #: Seconds since its last heartbeat, by the database's clock.
    silent_s: float


def listed(session: Session, *, timeout_s: float, history_s: float) -> list[Listed]:
    """Live workers, and those that stopped or died within `history_s`; newest first."""
    now = session.scalar(select(db_utcnow()))
    rows = session.scalars(
        select(Worker)
        .where(Worker.heartbeat_at >= db_utcnow(-history_s))
        .order_by(Worker.started_at.desc(), Worker.id)
    ).all()
    found: list[Listed] = []
    for row in rows:
        silent = max(0.0, (_aware(now) - row.heartbeat_at).total_seconds()) if now else 0.0
        if row.stopped_at is not None:
            state = WorkerState.stopped
        elif silent > timeout_s:
            state = WorkerState.dead
        else:
            state = WorkerState.live
        found.append(Listed(row=row, state=state, silent_s=silent))
    return found


def prune(session: Session, *, history_s: float) -> int:
    """Deletes the rows of workers silent for longer than `history_s`."""
    result = session.execute(
        delete(Worker)
        .where(Worker.heartbeat_at < db_utcnow(-history_s))
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)
