"""Client for a modelpress service: upload models and datasets, submit jobs and sweeps, wait
for them, compare and download the results. `from modelpress import Client`."""

from modelpress.client import Client
from modelpress.errors import (
    ApiError,
    ChecksumMismatch,
    ConnectionFailed,
    JobNotSucceeded,
    ModelpressError,
    WaitTimeout,
)
from modelpress.models import (
    Artifact,
    AutoAnswer,
    AutoResult,
    AutoTrial,
    Batch,
    Comparison,
    Dataset,
    Job,
    JobResult,
    JobSummary,
    Metrics,
    Model,
    Worker,
)

__all__ = [
    "ApiError",
    "Artifact",
    "AutoAnswer",
    "AutoResult",
    "AutoTrial",
    "Batch",
    "ChecksumMismatch",
    "Client",
    "Comparison",
    "ConnectionFailed",
    "Dataset",
    "Job",
    "JobNotSucceeded",
    "JobResult",
    "JobSummary",
    "Metrics",
    "Model",
    "ModelpressError",
    "WaitTimeout",
    "Worker",
]
