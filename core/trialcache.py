"""The result cache of auto-search trials: a trial whose inputs were already measured on the
same class of hardware with the same software reuses that measurement.

The key is a sha256 over the model's bytes, every dataset's bytes (their sha256), the trial's
canonical recipe (the whole pipeline spec with every default filled in), the library versions
and the hardware class. Two different models never share an entry: their bytes differ. Entries
are never shared between projects (the lookup is scoped to the project)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.tables import Job, JobKind, JobStatus, Worker
from optimizers.config import PipelineSpec

#: The software whose version changes a measurement.
_VERSIONED = ("modelpress", "onnxruntime", "onnxruntime-gpu", "torch", "onnx")


def hardware_class(*, device: Mapping[str, Any], cores: int, versions: Mapping[str, str]) -> str:
    """What a measurement depends on besides its inputs: the device (CPU model, or the GPU's
    name), the number of cores a job may use, and the library versions; canonical JSON."""
    return _canonical(
        {
            "device": device.get("kind"),
            "cpu": device.get("cpu_model"),
            "gpu": device.get("name") if device.get("kind") == "cuda" else None,
            "cores": cores,
            "versions": {name: versions.get(name) for name in _VERSIONED},
        }
    )


def worker_class(worker: Worker) -> str:
    return hardware_class(
        device=worker.device or {}, cores=len(worker.cores or []), versions=worker.versions or {}
    )


def recipe(spec: Mapping[str, Any]) -> dict[str, Any]:
    """A trial spec as canonical JSON: validated, every default filled in, without what does
    not change the measurement (the model id, labels, limits, attempts)."""
    fields = set(PipelineSpec.model_fields)
    pipeline = PipelineSpec.model_validate({k: v for k, v in spec.items() if k in fields})
    return pipeline.model_dump(mode="json")


def cache_key(
    *,
    model_sha256: str,
    dataset_sha256: Mapping[str, str],
    spec: Mapping[str, Any],
    hardware: str,
) -> str:
    # Dataset ids are the project's names for the bytes; the recipe names them, so the key
    # holds the mapping from id to content.
    return hashlib.sha256(
        _canonical(
            {
                "model": model_sha256,
                "datasets": dict(sorted(dataset_sha256.items())),
                "recipe": recipe(spec),
                "hardware": hardware,
            }
        ).encode()
    ).hexdigest()


def find(session: Session, *, project_id: str, key: str) -> Job | None:
    """The newest succeeded, measured (not itself cached) trial of the project with `key`
    whose artifacts are still kept."""
    return session.scalars(
        select(Job)
        .where(
            Job.project_id == project_id,
            Job.cache_key == key,
            Job.kind == JobKind.trial,
            Job.status == JobStatus.succeeded,
            Job.artifacts_expired_at.is_(None),
        )
        .order_by(Job.finished_at.desc())
    ).first()


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))
