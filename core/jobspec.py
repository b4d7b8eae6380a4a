"""The job spec a user submits: which model, and the pipeline to run on it."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from core.sweeps import Sweep, SweepError, count, expand
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
    labels: dict[str, Any] | None = Field(
        None,
        max_length=16,
        description="Free labels to tell jobs apart; a sweep's jobs carry the matrix values "
        "they were given (path: value).",
    )


#: Jobs in one batch: a sweep of this size is one request; a larger one is several batches.
MAX_BATCH_JOBS = 1000


class BatchSpec(StrictModel):
    """Job specs submitted at once, given as a list (`jobs`) or as a `sweep`, which the server
    expands into its jobs; all are checked before any is created, and an error names the job
    by its index in the expanded list and the field."""

    name: str | None = Field(None, max_length=200, description="A label for the batch.")
    jobs: list[JobSpec] = Field(min_length=1, max_length=MAX_BATCH_JOBS)
    sweep: Sweep | None = Field(
        None,
        description="Instead of `jobs`: one spec and a matrix of values; the jobs are the "
        "Cartesian product, in order (the last matrix path varies fastest).",
    )

    @model_validator(mode="before")
    @classmethod
    def _expand_sweep(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("sweep") is None:
            return data
        if data.get("jobs"):
            raise ValueError("give either `jobs` or `sweep`, not both")
        sweep = Sweep.model_validate(data["sweep"])
        total = count(sweep.matrix)
        if total > MAX_BATCH_JOBS:
            raise ValueError(
                f"the sweep expands to {total} jobs; a batch holds at most {MAX_BATCH_JOBS}"
            )
        try:
            jobs = expand(sweep.spec, sweep.matrix)
        except SweepError as exc:
            raise ValueError(str(exc)) from exc
        return {**data, "jobs": jobs}


def load_stored_spec(stored: dict[str, Any]) -> JobSpec:
    """A job spec as stored in the database, of any spec version, in today's shape."""
    return JobSpec.model_validate(upgrade_spec(stored))
