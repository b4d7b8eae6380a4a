"""The layout of the object store: every key the service writes is built here, so the API
(uploads, deletes) and the worker (artifacts, checkpoints) agree on where things live.

    <project>/models/<model id>/<stored name>
    <project>/datasets/<dataset id>/data.npz
    <project>/jobs/<job id>/attempt-<n>/<artifact name>   (what one attempt produced)
    <project>/jobs/<job id>/checkpoints/<name>             (shared by all attempts)
"""

from __future__ import annotations

DATASET_FILE = "data.npz"


def model_prefix(project_id: str, model_id: str) -> str:
    """Everything stored for one uploaded model; deleting the model deletes this prefix."""
    return f"{project_id}/models/{model_id}"


def model_key(project_id: str, model_id: str, stored_name: str) -> str:
    return f"{model_prefix(project_id, model_id)}/{stored_name}"


def dataset_prefix(project_id: str, dataset_id: str) -> str:
    return f"{project_id}/datasets/{dataset_id}"


def dataset_key(project_id: str, dataset_id: str) -> str:
    return f"{dataset_prefix(project_id, dataset_id)}/{DATASET_FILE}"


def attempt_prefix(project_id: str, job_id: str, attempt: int) -> str:
    """What one attempt of a job stored: a retried attempt replaces its predecessors' files."""
    return f"{project_id}/jobs/{job_id}/attempt-{attempt}"


def artifact_key(attempt: str, name: str) -> str:
    """An artifact under the `attempt_prefix` of the attempt that produced it."""
    return f"{attempt}/{name}"


def checkpoints_prefix(project_id: str, job_id: str) -> str:
    """Where a job's training checkpoints live: shared by all its attempts, on any worker."""
    return f"{project_id}/jobs/{job_id}/checkpoints"
