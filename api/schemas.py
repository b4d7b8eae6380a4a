"""Response bodies. Separate from the ORM tables so the API can change without migrations."""

from __future__ import annotations

import functools
import json
from collections.abc import Collection
from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, Field, ValidationError

from api.results import JobResult, JobSummary, typed_result
from core.jobspec import load_stored_spec
from core.tables import ApiKey, Artifact, Batch, Dataset, Job, JobStatus, Project, StoredModel
from core.workers import waiting_for
from optimizers.results import DatasetInfo, TensorInfo

T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_page_token: str | None = None


class ModelOut(BaseModel):
    id: str
    name: str
    format: str
    sha256: str
    size_bytes: int
    opset: int | None
    ir_version: int | None
    producer: str | None
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    parameter_count: int
    created_at: datetime

    @classmethod
    def of(cls, row: StoredModel) -> ModelOut:
        info = row.info
        return cls(
            id=row.id,
            name=row.name,
            format=row.format,
            sha256=row.sha256,
            size_bytes=row.size_bytes,
            opset=info.get("opset"),
            ir_version=info.get("ir_version"),
            producer=info.get("producer"),
            inputs=info["inputs"],
            outputs=info["outputs"],
            parameter_count=info["parameter_count"],
            created_at=row.created_at,
        )


class DatasetOut(BaseModel):
    id: str
    name: str
    sha256: str
    size_bytes: int
    num_samples: int
    has_labels: bool
    arrays: dict[str, Any]
    created_at: datetime

    @classmethod
    def of(cls, row: Dataset) -> DatasetOut:
        info = DatasetInfo.model_validate(row.info)
        return cls(
            id=row.id,
            name=row.name,
            sha256=row.sha256,
            size_bytes=row.size_bytes,
            num_samples=info.num_samples,
            has_labels=info.has_labels,
            arrays={k: v.model_dump() for k, v in info.arrays.items()},
            created_at=row.created_at,
        )


class JobProgress(BaseModel):
    fraction: float = Field(description="0..1")
    message: str | None


class JobError(BaseModel):
    type: str
    message: str


class WaitingFor(BaseModel):
    """Why a queued job cannot start now."""

    queue: str = Field(description="The queue the job waits on (`cpu` or `gpu`).")
    reason: str = Field(description="E.g. no live worker serves the queue.")


class JobOut(BaseModel):
    id: str
    model_id: str | None
    status: Literal["queued", "running", "canceling", "succeeded", "failed", "canceled"]
    stage: str | None
    progress: JobProgress
    queue: str
    attempts: int
    max_attempts: int
    worker: str | None = Field(
        description="The worker that runs the job, or last ran it: its host name and process "
        "id (`host:pid`). On several worker machines it says which one a job was on."
    )
    batch_id: str | None = Field(description="The batch this job was submitted in, if any.")
    kind: Literal["job", "search", "trial"] = Field(
        "job",
        description="`search`: an auto search (its answer in `result.auto`); `trial`: one "
        "measured recipe of a search (`parent_id`); `job`: every other job.",
    )
    parent_id: str | None = Field(None, description="A trial's search.")
    trial: dict[str, Any] | None = Field(
        None,
        description="A trial's place in its search: `key`, `family`, `rung`, `why`, and "
        "`cached_from` (the trial whose measurement it reuses) when it came from the cache.",
    )
    retry_of: str | None = Field(description="The failed or canceled job this one retries.")
    error: JobError | None
    waiting_for: WaitingFor | None = Field(
        None,
        description="Set while the job is queued and no live worker serves its queue (e.g. a "
        "`gpu` job and no GPU worker): it stays queued and starts once one is there.",
    )
    spec: dict[str, Any]
    labels: dict[str, Any] | None = Field(
        None, description="The spec's labels (a sweep's jobs: the matrix values they were given)."
    )
    summary: JobSummary | None = Field(
        None, description="A succeeded job's headline numbers, as a comparison table needs them."
    )
    result: JobResult | None
    created_at: datetime
    queued_at: datetime | None
    started_at: datetime | None
    heartbeat_at: datetime | None
    cancel_requested_at: datetime | None
    finished_at: datetime | None
    artifacts_expired_at: datetime | None = Field(
        None,
        description="When retention (MODELPRESS_RETENTION_DAYS) removed the job's artifacts; "
        "its result numbers are kept.",
    )

    @classmethod
    def of(cls, row: Job, *, live_queues: Collection[str] | None = None) -> JobOut:
        """`live_queues`: the queues some live worker serves (api.deps.live_queues); every
        API answer passes them. None leaves `waiting_for` unset (not known to the caller)."""
        error = None
        if row.error_type:
            error = JobError(type=row.error_type, message=row.error_message or "")
        return cls(
            id=row.id,
            model_id=row.model_id,
            status=row.status,
            stage=row.stage,
            progress=JobProgress(fraction=row.progress, message=row.progress_message),
            queue=row.queue,
            attempts=row.attempts,
            max_attempts=row.max_attempts,
            worker=row.worker,
            batch_id=row.batch_id,
            kind=row.kind or "job",
            parent_id=row.parent_id,
            trial=row.trial,
            retry_of=row.retry_of,
            error=error,
            waiting_for=None
            if live_queues is None
            else waiting_for(status=row.status, queue=row.queue, live=live_queues),
            spec=_with_defaults(row.spec),
            labels=row.spec.get("labels"),
            summary=JobSummary.of(row.result),
            result=typed_result(row.result),
            created_at=row.created_at,
            queued_at=row.queued_at,
            started_at=row.started_at,
            heartbeat_at=row.heartbeat_at,
            cancel_requested_at=row.cancel_requested_at,
            finished_at=row.finished_at,
            artifacts_expired_at=row.artifacts_expired_at,
        )


def _with_defaults(stored: dict[str, Any]) -> dict[str, Any]:
    """A job's spec as the worker runs it, defaults filled in (the row keeps what was sent).

    Upgrading and validating a stored spec is most of what showing a job costs (a page of 100
    jobs did it 100 times per request), and its outcome depends on the stored spec alone: it
    is computed once per distinct stored spec and kept as JSON text, so that every answer
    gets a fresh copy that no other answer shares."""
    return json.loads(_with_defaults_json(json.dumps(stored)))


@functools.lru_cache(maxsize=2048)
def _with_defaults_json(stored_json: str) -> str:
    stored = json.loads(stored_json)
    try:
        return json.dumps(load_stored_spec(stored).model_dump(mode="json"))
    except ValidationError:  # a row stored with every default by an older version
        return stored_json


BatchStatus = Literal["queued", "running", "succeeded", "failed", "canceled"]


class BatchSummary(BaseModel):
    id: str
    name: str | None
    status: BatchStatus = Field(
        description="queued: no job started yet; running: some job not final yet; once every "
        "job is final: succeeded if all succeeded, failed if any failed, else canceled."
    )
    counts: dict[str, int] = Field(description="Jobs of the batch in each state.")
    total: int
    created_at: datetime

    @classmethod
    def of(cls, row: Batch, counts: dict[str, int]) -> BatchSummary:
        return cls(
            id=row.id,
            name=row.name,
            status=batch_status(counts),
            counts={status.value: counts.get(status.value, 0) for status in JobStatus},
            total=sum(counts.values()),
            created_at=row.created_at,
        )


class BatchOut(BatchSummary):
    jobs: list[JobOut] = Field(description="The batch's jobs, in the order they were given.")


def batch_status(counts: dict[str, int]) -> BatchStatus:
    active = sum(counts.get(s, 0) for s in ("queued", "running", "canceling"))
    if active:
        return "queued" if counts.get("queued", 0) == sum(counts.values()) else "running"
    if counts.get("failed", 0):
        return "failed"
    if counts.get("canceled", 0):
        return "canceled"
    return "succeeded"


class ArtifactOut(BaseModel):
    id: str
    job_id: str
    kind: str
    name: str
    content_type: str
    sha256: str
    size_bytes: int
    created_at: datetime

    @classmethod
    def of(cls, row: Artifact) -> ArtifactOut:
        return cls(
            id=row.id,
            job_id=row.job_id,
            kind=row.kind,
            name=row.name,
            content_type=row.content_type,
            sha256=row.sha256,
            size_bytes=row.size_bytes,
            created_at=row.created_at,
        )


class ProjectOut(BaseModel):
    id: str
    name: str
    created_at: datetime
    active_keys: int = Field(
        description="Keys of the project that are neither revoked nor expired."
    )

    @classmethod
    def of(cls, row: Project, *, active_keys: int) -> ProjectOut:
        return cls(id=row.id, name=row.name, created_at=row.created_at, active_keys=active_keys)


class KeyOut(BaseModel):
    id: str
    project_id: str
    name: str
    prefix: str
    scopes: list[str]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None

    @classmethod
    def of(cls, row: ApiKey) -> KeyOut:
        return cls(
            id=row.id,
            project_id=row.project_id,
            name=row.name,
            prefix=row.display_prefix,
            scopes=row.scopes,
            created_at=row.created_at,
            expires_at=row.expires_at,
            revoked_at=row.revoked_at,
        )


class KeyCreated(KeyOut):
    key: str = Field(description="The secret key. Shown only this once.")
