"""Spec files for `modelpress submit`: one job, a list of jobs, or a sweep, in YAML or JSON.
Local files named in them are uploaded (or reused by sha256) and replaced by their ids."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from modelpress.errors import ModelpressError


class SpecFileError(ModelpressError):
    """A spec file that is not one job, a list of jobs, or a sweep."""


@dataclass
class SpecFile:
    """What a spec file asks for. `jobs` for one job or a list; `sweep` for a matrix."""

    name: str | None
    jobs: list[dict[str, Any]] = field(default_factory=list)
    sweep: dict[str, Any] | None = None
    datasets: dict[str, str] = field(default_factory=dict)
    folder: Path = Path(".")

    @property
    def single(self) -> bool:
        return self.sweep is None and len(self.jobs) == 1


def load(path: Path) -> SpecFile:
    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SpecFileError(f"{path}: cannot read the spec file: {exc}") from exc
    folder = path.resolve().parent
    if isinstance(document, list):
        return SpecFile(
            name=None, jobs=[_job(j, path, i) for i, j in enumerate(document)], folder=folder
        )
    if not isinstance(document, dict):
        raise SpecFileError(f"{path}: expected a mapping (one job or a sweep) or a list of jobs")
    document = dict(document)
    name = document.pop("name", None)
    datasets = document.pop("datasets", None) or {}
    if not isinstance(datasets, dict):
        raise SpecFileError(f"{path}: `datasets` maps names to files or dataset ids")
    if "jobs" in document:
        jobs = document.pop("jobs")
        if not isinstance(jobs, list) or not jobs:
            raise SpecFileError(f"{path}: `jobs` is a non-empty list of job specs")
        common = _model_alias(document)  # fields given once for every job, e.g. model
        return SpecFile(
            name=name,
            jobs=[{**common, **_job(j, path, i)} for i, j in enumerate(jobs)],
            datasets={str(k): str(v) for k, v in datasets.items()},
            folder=folder,
        )
    matrix = document.pop("matrix", None)
    if matrix is not None:
        if not isinstance(matrix, dict) or not matrix:
            raise SpecFileError(f"{path}: `matrix` maps spec paths to lists of values")
        return SpecFile(
            name=name,
            sweep={"spec": _model_alias(document), "matrix": matrix},
            datasets={str(k): str(v) for k, v in datasets.items()},
            folder=folder,
        )
    return SpecFile(
        name=name,
        jobs=[_model_alias(document)],
        datasets={str(k): str(v) for k, v in datasets.items()},
        folder=folder,
    )


def _job(job: Any, path: Path, index: int) -> dict[str, Any]:
    if not isinstance(job, dict):
        raise SpecFileError(f"{path}: job {index} is not a mapping")
    return _model_alias(job)


def _model_alias(job: dict[str, Any]) -> dict[str, Any]:
    """`model: FILE|ID` is short for `model_id`."""
    job = dict(job)
    if "model" in job and "model_id" not in job:
        job["model_id"] = job.pop("model")
    return job


def references(document: Any, key: str) -> list[str]:
    """Every string value of `key` anywhere in the document."""
    found: list[str] = []
    if isinstance(document, dict):
        for k, v in document.items():
            if k == key and isinstance(v, str):
                found.append(v)
            else:
                found += references(v, key)
    elif isinstance(document, list):
        for item in document:
            found += references(item, key)
    return found


def replace(document: Any, key: str, mapping: dict[str, str]) -> Any:
    if isinstance(document, dict):
        return {
            k: mapping.get(v, v) if k == key and isinstance(v, str) else replace(v, key, mapping)
            for k, v in document.items()
        }
    if isinstance(document, list):
        return [replace(item, key, mapping) for item in document]
    return document


def local_file(value: str, folder: Path) -> Path | None:
    """The file a spec value names, relative to the spec file's folder or the working folder;
    None for anything else (an id)."""
    for candidate in (folder / value, Path(value)):
        if candidate.is_file():
            return candidate
    return None
