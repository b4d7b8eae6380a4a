"""The job spec a user submits: which model, and the pipeline to run on it."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from optimizers.config import PipelineSpec, StrictModel
from optimizers.spec_versions import upgrade_spec


class JobLimits(StrictModel):
    """Lower limits for one job than the worker's own; a higher value has no effect."""

    soft_time_limit_s: float | None = Field(
        None, gt=0, description="Seconds after which the job is asked to stop."
    )
    hard_time_limit_s: float | None = Field(
        None, gt=0, description="Seconds after which the job's process is killed."
    )
    memory_limit_mb: int | None = Field(
        None, ge=1, description="Memory (MB) the job's process may have of its own."
    )


class JobSpec(PipelineSpec):
    model_id: str = Field(min_length=1, max_length=64)
    max_attempts: int | None = Field(
        None, ge=1, le=10, description="Attempts before the job fails; default from settings."
    )
    limits: JobLimits = Field(default_factory=JobLimits)


#: Jobs in one batch: a sweep of this size is one request; a larger one is several batches.
MAX_BATCH_JOBS = 100


class BatchSpec(StrictModel):
    """Job specs submitted at once; all are checked before any is created."""

    name: str | None = Field(None, max_length=200, description="A label for the batch.")
    jobs: list[JobSpec] = Field(min_length=1, max_length=MAX_BATCH_JOBS)


def load_stored_spec(stored: dict[str, Any]) -> JobSpec:
    """A job spec as stored in the database, of any spec version, in today's shape."""
    return JobSpec.model_validate(upgrade_spec(stored))
