"""/v1/workers: the workers that serve this instance, as they report themselves (admin)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field
from sqlalchemy import select

from api.deps import AdminKey, SessionDep, SettingsDep
from core import workers
from core.tables import Job

router = APIRouter(prefix="/v1/workers", tags=["workers"])


class WorkerOut(BaseModel):
    id: str
    name: str = Field(description="Celery's node name, e.g. `cpu-a@host1`.")
    host: str
    pid: int
    state: Literal["live", "stopped", "dead"] = Field(
        description="live: heartbeat within MODELPRESS_HEARTBEAT_TIMEOUT_S; stopped: it shut "
        "down cleanly; dead: its heartbeat stopped without a clean shutdown."
    )
    queues: list[str] = Field(description="The queues it consumes.")
    refused: dict[str, str] = Field(
        description="Queues it was started for and refused, with the reason (a `gpu` queue "
        "whose GPU check failed)."
    )
    cores: list[int] = Field(description="The cores it and its jobs are pinned to.")
    device: dict[str, Any] = Field(
        description='{"kind": "cpu"}, or {"kind": "cuda", "name", "memory_bytes", "driver", '
        '"compute_capability", "execution_provider"} for a GPU that passed its check.'
    )
    versions: dict[str, str]
    busy: bool = Field(description="Whether it runs a job now.")
    current_job_id: str | None = Field(
        description="The job it runs, when that job belongs to the caller's project; a job of "
        "another project shows only as `busy`."
    )
    started_at: datetime
    heartbeat_at: datetime
    seconds_since_heartbeat: float
    stopped_at: datetime | None


@router.get("", response_model=list[WorkerOut])
def list_workers(key: AdminKey, session: SessionDep, settings: SettingsDep) -> list[WorkerOut]:
    """Live workers, and those that stopped or died within MODELPRESS_WORKER_HISTORY_S,
    newest first."""
    found = workers.listed(
        session, timeout_s=settings.heartbeat_timeout_s, history_s=settings.worker_history_s
    )
    job_ids = [
        entry.row.current_job_id
        for entry in found
        if entry.row.current_job_id and entry.state == workers.WorkerState.live
    ]
    own = set(
        session.scalars(
            select(Job.id).where(Job.id.in_(job_ids), Job.project_id == key.project_id)
        ).all()
        if job_ids
        else []
    )
    listed: list[WorkerOut] = []
    for entry in found:
        row = entry.row
        live = entry.state == workers.WorkerState.live
        current = row.current_job_id if live else None
        listed.append(
            WorkerOut(
                id=row.id,
                name=row.name,
                host=row.host,
                pid=row.pid,
                state=entry.state.value,
                queues=row.queues,
                refused=row.refused or {},
                cores=row.cores,
                device=row.device,
                versions=row.versions,
                busy=current is not None,
                current_job_id=current if current in own else None,
                started_at=row.started_at,
                heartbeat_at=row.heartbeat_at,
                seconds_since_heartbeat=round(entry.silent_s, 1),
                stopped_at=row.stopped_at,
            )
        )
    return listed
