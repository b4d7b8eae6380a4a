"""What the workers panel shows: which queues some live worker serves and what each worker
runs. Read today from the jobs a worker holds (a worker is seen while it runs a job whose
heartbeat is fresh); the panel's template reads only the dataclasses below, so a source that
also knows idle workers replaces `live_workers` alone."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.dbclock import db_utcnow
from core.jobstate import RUNNING
from core.queue import QUEUES
from core.settings import Settings
from core.tables import Job
from web.auth import SignedIn


@dataclass(frozen=True)
class WorkerRow:
    name: str
    queues: list[str]
    #: Jobs it runs that belong to the viewer's project (linked on the page).
    own_job_ids: list[str]
    #: Jobs it runs for other projects: counted, never named.
    other_jobs: int

    @property
    def busy(self) -> bool:
        return bool(self.own_job_ids) or self.other_jobs > 0


@dataclass(frozen=True)
class QueueRow:
    name: str
    #: Names of the live workers seen serving it; empty: nothing known to serve it.
    workers: list[str]

    @property
    def served(self) -> bool:
        return bool(self.workers)


@dataclass(frozen=True)
class WorkersView:
    #: Says where the panel's knowledge comes from, shown above the tables.
    source: str
    #: Whether an idle worker shows: if not, "no worker" on a queue means "none seen".
    sees_idle_workers: bool
    queues: list[QueueRow]
    workers: list[WorkerRow] = field(default_factory=list)


def live_workers(session: Session, viewer: SignedIn, *, settings: Settings) -> WorkersView:
    """Workers seen running jobs: the worker process named on each running job whose
    heartbeat is within MODELPRESS_HEARTBEAT_TIMEOUT_S (by the database's clock)."""
    rows = session.execute(
        select(Job.worker, Job.queue, Job.id, Job.project_id)
        .where(
            Job.status.in_(RUNNING),
            Job.worker.is_not(None),
            Job.heartbeat_at >= db_utcnow(-settings.heartbeat_timeout_s),
        )
        .order_by(Job.worker, Job.started_at, Job.id)
    ).all()
    queues: dict[str, set[str]] = defaultdict(set)
    own: dict[str, list[str]] = defaultdict(list)
    others: dict[str, int] = defaultdict(int)
    for worker, queue, job_id, project_id in rows:
        assert worker is not None  # filtered above
        queues[worker].add(queue)
        if project_id == viewer.project_id:
            own[worker].append(job_id)
        else:
            others[worker] += 1
    workers = [
        WorkerRow(
            name=name,
            queues=sorted(served),
            own_job_ids=own.get(name, []),
            other_jobs=others.get(name, 0),
        )
        for name, served in sorted(queues.items())
    ]
    return WorkersView(
        source="workers seen running jobs",
        sees_idle_workers=False,
        queues=[
            QueueRow(name=queue, workers=[w.name for w in workers if queue in w.queues])
            for queue in QUEUES
        ],
        workers=workers,
    )
