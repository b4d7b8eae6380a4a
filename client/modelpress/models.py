"""Typed results: the shapes of the API's schemas. Fields the service adds later pass
through (extra="allow"), so an older client keeps working against a newer service."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

#: Job states. A job is final in the last three. `cancelling` is an older spelling of
#: `canceling` that some services still send.
ACTIVE_STATUSES = frozenset({"queued", "running", "canceling", "cancelling"})
FINAL_STATUSES = frozenset({"succeeded", "failed", "canceled"})


class _Schema(BaseModel):
    model_config = ConfigDict(extra="allow")


class TensorInfo(_Schema):
    name: str
    dtype: str | None = None
    shape: list[Any] | None = None


class Model(_Schema):
    id: str
    name: str
    format: str
    sha256: str
    size_bytes: int
    inputs: list[TensorInfo] = Field(default_factory=list)
    outputs: list[TensorInfo] = Field(default_factory=list)
    parameter_count: int | None = None
    opset: int | None = None
    created_at: datetime | None = None


class Dataset(_Schema):
    id: str
    name: str
    sha256: str
    size_bytes: int
    num_samples: int | None = None
    has_labels: bool | None = None
    created_at: datetime | None = None


class JobProgress(_Schema):
    fraction: float = 0.0
    message: str | None = None


class JobError(_Schema):
    type: str
    message: str


class WaitingFor(_Schema):
    """Why a queued job cannot start: no live worker serves its queue."""

    queue: str
    reason: str


class JobSummary(_Schema):
    """A succeeded job's headline numbers (the API's `summary`)."""

    size_ratio: float
    speedup_p50: dict[str, float] = Field(default_factory=dict)
    speedup_interval: dict[str, list[float]] = Field(default_factory=dict)
    metric: str | None = None
    drop: float | None = None
    max_drop: float | None = None
    within_tolerance: bool | None = None
    slower_than_baseline: bool = False
    verdict: str = ""


class LatencyStats(_Schema):
    p50: float
    p90: float | None = None
    p95: float | None = None
    p99: float | None = None
    mean: float | None = None


class ModelMeasurement(_Schema):
    """The baseline or the optimized model, measured in the job's worker run."""

    size_bytes: int
    latency_ms: dict[str, LatencyStats] = Field(default_factory=dict)
    throughput_per_s: dict[str, float] = Field(default_factory=dict)
    peak_memory_bytes: int | None = None
    accuracy: float | None = None


class Fidelity(_Schema):
    cosine_mean: float | None = None
    source: str | None = None
    samples: int | None = None


class Comparison(_Schema):
    size_ratio: float | None = None
    speedup_p50: dict[str, float] = Field(default_factory=dict)
    speedup_interval: dict[str, list[float]] = Field(default_factory=dict)
    accuracy_drop: float | None = None
    metric: str | None = None
    drop: float | None = None
    max_drop: float | None = None
    slower_than_baseline: bool | None = None
    within_tolerance: bool | None = None
    verdict: str | None = None


class Metrics(_Schema):
    baseline: ModelMeasurement | None = None
    optimized: ModelMeasurement | None = None
    fidelity: Fidelity | None = None
    comparison: Comparison | None = None
    benchmark: dict[str, Any] | None = None
    environment: dict[str, Any] | None = None


class AutoTrial(_Schema):
    """One trial (a child job) of an auto search, with its numbers once measured."""

    key: str
    family: str | None = None
    rung: int | None = None
    status: str = "queued"
    job_id: str | None = None
    why: str | None = None
    speedup: float | None = None
    interval: list[float] | None = None
    size_ratio: float | None = None
    drop: float | None = None
    within_tolerance: bool | None = None
    verdict: str | None = None
    error: str | None = None
    cached: bool | None = None

    @property
    def qualifies(self) -> bool:
        """Faster than the original by the paired interval, and within the tolerance."""
        if self.within_tolerance is False:
            return False
        if self.interval and len(self.interval) == 2:
            return self.interval[0] > 1.0
        return False

    @property
    def slower(self) -> bool:
        if self.interval and len(self.interval) == 2:
            return self.interval[1] < 1.0
        return False


class AutoProgress(_Schema):
    done: int = 0
    running: int = 0
    queued: int = 0
    left: int | None = None
    budget_trials: int | None = None
    minutes: float | None = None
    started_at: datetime | None = None
    deadline_at: datetime | None = None
    cached: int = 0


class AutoAnswer(_Schema):
    """The search's answer: the best trial (or None), a fallback when nothing qualified, and
    why each rejected family was rejected."""

    best: str | None = None
    best_job_id: str | None = None
    fallback: str | None = None
    message: str | None = None
    pareto: list[str] = Field(default_factory=list)
    rejected: dict[str, str] = Field(default_factory=dict)
    trials: list[AutoTrial] = Field(default_factory=list)


class AutoResult(_Schema):
    """An auto search's state (`result.auto`), rewritten at every step of the search."""

    preflight: dict[str, Any] | None = None
    progress: AutoProgress | None = None
    stopped: str | None = None
    answer: AutoAnswer | None = None


class JobResult(_Schema):
    """A job's numbers (the API's `result`)."""

    metrics: Metrics | None = None
    notes: list[str] | None = None
    passes: list[dict[str, Any]] | None = None
    stages: list[dict[str, Any]] | None = None
    #: Set on an auto search.
    auto: AutoResult | None = None


class Job(_Schema):
    id: str
    # A plain string: the client neither refuses nor misreads a state it does not know.
    status: str
    model_id: str | None = None
    stage: str | None = None
    progress: JobProgress = Field(default_factory=JobProgress)
    attempts: int = 0
    batch_id: str | None = None
    retry_of: str | None = None
    error: JobError | None = None
    waiting_for: WaitingFor | None = None
    spec: dict[str, Any] = Field(default_factory=dict)
    labels: dict[str, Any] | None = None
    summary: JobSummary | None = None
    result: JobResult | None = None
    created_at: datetime | None = None
    finished_at: datetime | None = None
    #: When the service's retention removed the job's artifacts (its numbers are kept).
    artifacts_expired_at: datetime | None = None

    @property
    def done(self) -> bool:
        return self.status in FINAL_STATUSES

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"


class Batch(_Schema):
    id: str
    name: str | None = None
    status: str
    counts: dict[str, int] = Field(default_factory=dict)
    total: int
    jobs: list[Job] = Field(default_factory=list)
    created_at: datetime | None = None

    @property
    def done(self) -> bool:
        return self.status in FINAL_STATUSES


class Worker(_Schema):
    """A worker as it reports itself (GET /v1/workers, admin)."""

    id: str
    name: str
    host: str | None = None
    state: str
    queues: list[str] = Field(default_factory=list)
    refused: dict[str, str] = Field(default_factory=dict)
    cores: list[int] = Field(default_factory=list)
    device: dict[str, Any] = Field(default_factory=dict)
    versions: dict[str, str] = Field(default_factory=dict)
    busy: bool = False
    current_job_id: str | None = None
    seconds_since_heartbeat: float | None = None


class Artifact(_Schema):
    id: str
    job_id: str
    kind: str
    name: str
    content_type: str | None = None
    sha256: str
    size_bytes: int
    created_at: datetime | None = None


class Project(_Schema):
    id: str
    name: str
    active_keys: int | None = None


class ApiKey(_Schema):
    id: str
    project_id: str
    name: str
    prefix: str | None = None
    scopes: list[str] = Field(default_factory=list)
    key: str | None = None
    revoked_at: datetime | None = None
