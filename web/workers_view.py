"""What the workers panel shows: which queues some live worker serves and what each worker
runs, from the workers' own reports (core.workers: a row per worker, refreshed by its
heartbeat). A job of another project is counted, never named."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from core import workers as registry
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
    host: str = ""
    cores: list[int] = field(default_factory=list)
    #: "cpu", or the GPU's name.
    device: str = "cpu"
    #: Queues it was started for and refused, with the reason (a failed GPU check).
    refused: dict[str, str] = field(default_factory=dict)

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
    """The live workers (heartbeat within MODELPRESS_HEARTBEAT_TIMEOUT_S, by the database's
    clock), busy or idle, with the queues they serve."""
    live = [
        entry.row
        for entry in registry.listed(
            session, timeout_s=settings.heartbeat_timeout_s, history_s=settings.worker_history_s
        )
        if entry.state == registry.WorkerState.live
    ]
    # What each runs, read from the jobs themselves (the claim names the worker): the truth
    # at this moment, where the worker's own row learns it only at its next heartbeat.
    running: dict[str, list[tuple[str, str]]] = {}
    if live:
        for worker_id, job_id, project_id in session.execute(
            select(Job.worker_id, Job.id, Job.project_id)
            .where(Job.worker_id.in_([row.id for row in live]), Job.status.in_(RUNNING))
            .order_by(Job.started_at, Job.id)
        ).all():
            running.setdefault(str(worker_id), []).append((job_id, project_id))
    rows = [
        WorkerRow(
            name=row.name,
            queues=sorted(row.queues),
            own_job_ids=[
                job_id
                for job_id, project in running.get(row.id, [])
                if project == viewer.project_id
            ],
            other_jobs=sum(
                1 for _, project in running.get(row.id, []) if project != viewer.project_id
            ),
            host=row.host,
            cores=list(row.cores),
            device=str(row.device.get("name") or row.device.get("kind") or "cpu"),
            refused=dict(row.refused or {}),
        )
        for row in sorted(live, key=lambda r: r.name)
    ]
    return WorkersView(
        source="workers as they report themselves",
        sees_idle_workers=True,
        queues=[
            QueueRow(name=queue, workers=[w.name for w in rows if queue in w.queues])
            for queue in QUEUES
        ],
        workers=rows,
    )
