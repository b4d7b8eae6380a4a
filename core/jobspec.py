"""The job spec a user submits: which model, and the pipeline to run on it."""

from __future__ import annotations

from pydantic import Field

from optimizers.config import PipelineSpec


class JobSpec(PipelineSpec):
    model_id: str = Field(min_length=1, max_length=64)
    max_attempts: int | None = Field(
        None, ge=1, le=10, description="Attempts before the job fails; default from settings."
    )
