"""The provenance manifest of a succeeded job (`provenance.json`): what it read (by sha256),
the recipe it ran, what it produced (by sha256), the libraries and machine it ran on, and a
spec that submits it again.

Built by the pool process, from what it fetched and stored and what the job reported; it reads
library versions from the installed distributions rather than importing them (the pool
process never loads torch or onnxruntime).
"""

from __future__ import annotations

import platform
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from worker.presence import versions as installed_versions

#: Bump when a field of the manifest changes meaning or goes away.
MANIFEST_VERSION = 1
#: The distributions a job may run on: the service itself and what its passes load.
_DISTRIBUTIONS = (
    "modelpress",
    "onnx",
    "onnxruntime",
    "onnxruntime-gpu",
    "numpy",
    "torch",
    "onnxscript",
    "torch-pruning",
    "onnx2torch",
)
#: What the result's environment says of the machine (its versions are merged separately).
_HARDWARE_KEYS = (
    "cpu_model",
    "cpu_flags",
    "cores_logical",
    "cores_physical",
    "cores",
    "memory_total_bytes",
    "platform",
    "execution_provider",
    "threads",
    "torch_threads",
    "device",
    "gpu",
    "gpu_device",
)


@dataclass(frozen=True)
class FileDigest:
    """One file the job read or produced."""

    sha256: str
    size_bytes: int


@dataclass(frozen=True)
class ProducedFile:
    kind: str
    name: str
    content_type: str
    sha256: str
    size_bytes: int
    #: The pass whose output it is; None for what the whole job produced.
    stage: int | None = None


def build_manifest(
    *,
    job_id: str,
    attempt: int,
    spec: Mapping[str, Any],
    model: FileDigest,
    model_format: str,
    extra_models: Mapping[str, FileDigest],
    datasets: Mapping[str, FileDigest],
    produced: Sequence[ProducedFile],
    environment: Mapping[str, Any] | None,
    worker: Mapping[str, Any],
) -> dict[str, Any]:
    """The manifest as JSON-ready data. `spec` is the job's spec after defaults and upgrades
    (JobSpec.model_dump(mode="json")): both the recipe and the spec to submit again."""
    recipe = _sorted(spec)
    spec_file = f"{job_id}-spec.json"  # what the CLI line reads: reproduce.spec, saved
    return {
        "manifest_version": MANIFEST_VERSION,
        "job_id": job_id,
        "attempt": attempt,
        "inputs": {
            "model": {"id": spec["model_id"], "format": model_format, **_digest(model)},
            "extra_models": {key: _digest(extra_models[key]) for key in sorted(extra_models)},
            "datasets": {key: _digest(datasets[key]) for key in sorted(datasets)},
        },
        "recipe": recipe,
        "spec_version": recipe.get("spec_version"),
        "artifacts": [
            {
                "kind": item.kind,
                "name": item.name,
                "content_type": item.content_type,
                "sha256": item.sha256,
                "size_bytes": item.size_bytes,
                **({"pass": item.stage} if item.stage is not None else {}),
            }
            for item in produced
        ],
        "versions": _versions(environment),
        "hardware": _hardware(environment),
        "worker": dict(worker),
        "reproduce": {
            "method": "POST",
            "path": "/v1/jobs",
            "spec": recipe,
            "spec_file": spec_file,
            "cli": f"modelpress submit {shlex.quote(spec_file)} --wait",
        },
    }


def _digest(item: FileDigest) -> dict[str, Any]:
    return {"sha256": item.sha256, "size_bytes": item.size_bytes}


def _sorted(value: Any) -> Any:
    """A stable key order at every depth, so two manifests of one recipe read the same."""
    if isinstance(value, Mapping):
        return {key: _sorted(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [_sorted(item) for item in value]
    return value


def _versions(environment: Mapping[str, Any] | None) -> dict[str, str]:
    """The installed versions of what a job may load (those not installed are left out),
    with the versions the job itself reported on top."""
    versions = installed_versions(_DISTRIBUTIONS)
    reported = (environment or {}).get("versions")
    if isinstance(reported, Mapping):
        versions |= {str(k): str(v) for k, v in reported.items() if v not in (None, "unknown")}
    if isinstance((environment or {}).get("python"), str):
        versions["python"] = str(environment["python"])  # type: ignore[index]
    return dict(sorted(versions.items()))


def _hardware(environment: Mapping[str, Any] | None) -> dict[str, Any]:
    if not environment:
        return {"platform": platform.platform(), "machine": platform.machine()}
    return {key: environment[key] for key in _HARDWARE_KEYS if key in environment}
