"""The layout of the object store: every key the service writes is built here, so the API
(uploads, deletes) and the worker (artifacts, checkpoints) agree on where things live.

    <project>/models/<model id>/<stored name>
    <project>/models/<model id>/calibration/<dataset sha256>/<key>.json
                                              (static calibrations kept between jobs)
    <project>/datasets/<dataset id>/data.npz
    <project>/jobs/<job id>/attempt-<n>/<artifact name>   (what one attempt produced)
    <project>/jobs/<job id>/checkpoints/<name>             (shared by all attempts)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

DATASET_FILE = "data.npz"

OwnerKind = Literal["models", "datasets", "jobs"]
#: The folders under a project's prefix, each named after the table whose rows own them.
OWNER_KINDS: tuple[OwnerKind, ...] = ("models", "datasets", "jobs")


@dataclass(frozen=True)
class Owner:
    """The row an object belongs to, read from its key."""

    kind: OwnerKind
    project_id: str
    resource_id: str


def owner_of(key: str) -> Owner | None:
    """None for a key outside this layout: the sweeper leaves such objects alone."""
    parts = key.split("/")
    if len(parts) < 4 or parts[1] not in OWNER_KINDS:
        return None
    kind: OwnerKind = parts[1]
    return Owner(kind=kind, project_id=parts[0], resource_id=parts[2])


def model_prefix(project_id: str, model_id: str) -> str:
    """Everything stored for one uploaded model; deleting the model deletes this prefix."""
    return f"{project_id}/models/{model_id}"


def model_key(project_id: str, model_id: str, stored_name: str) -> str:
    return f"{model_prefix(project_id, model_id)}/{stored_name}"


def calibration_prefix(project_id: str, model_id: str, dataset_sha256: str) -> str:
    """Static calibrations of one model on one dataset (named by its content) kept between
    the model's jobs. Inside the model's prefix: deleting the model deletes them, and the
    sweeper keeps them exactly as long as the model's row exists."""
    return f"{model_prefix(project_id, model_id)}/calibration/{dataset_sha256}"


def dataset_prefix(project_id: str, dataset_id: str) -> str:
    return f"{project_id}/datasets/{dataset_id}"


def dataset_key(project_id: str, dataset_id: str) -> str:
    return f"{dataset_prefix(project_id, dataset_id)}/{DATASET_FILE}"


def job_prefix(project_id: str, job_id: str) -> str:
    """Everything stored for one job: every attempt's artifacts and its checkpoints."""
    return f"{project_id}/jobs/{job_id}"


def attempt_prefix(project_id: str, job_id: str, attempt: int) -> str:
    """What one attempt of a job stored: a retried attempt replaces its predecessors' files."""
    return f"{job_prefix(project_id, job_id)}/attempt-{attempt}"


def artifact_key(attempt: str, name: str) -> str:
    """An artifact under the `attempt_prefix` of the attempt that produced it."""
    return f"{attempt}/{name}"


def checkpoints_prefix(project_id: str, job_id: str) -> str:
    """Where a job's training checkpoints live: shared by all its attempts, on any worker."""
    return f"{job_prefix(project_id, job_id)}/checkpoints"
