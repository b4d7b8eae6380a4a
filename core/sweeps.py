"""Sweeps: one job spec and a `matrix` of values at dotted paths, expanded into the Cartesian
product of job specs, each labelled with its values. The API's batches and the dashboard both
expand through here, so a sweep means the same thing wherever it is written."""

from __future__ import annotations

import copy
import itertools
from typing import Any

from pydantic import Field

from optimizers.config import StrictModel

#: Values one matrix path may take, and paths one matrix may vary.
MAX_MATRIX_VALUES = 100
MAX_MATRIX_PATHS = 16


class SweepError(ValueError):
    """A matrix that names a path the spec cannot have (e.g. an index past a list's end)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"matrix.{path}: {message}")
        self.path = path


class Sweep(StrictModel):
    """One job spec and the values to vary in it."""

    spec: dict[str, Any] = Field(
        description="The job spec every job starts from (as POST /v1/jobs takes it)."
    )
    matrix: dict[str, list[Any]] = Field(
        min_length=1,
        max_length=MAX_MATRIX_PATHS,
        description="Dotted paths into the spec (list items by index, e.g. "
        "`passes.0.method`), each with the values to try; every combination becomes a job.",
    )


def combinations(matrix: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the matrix's values, the last path varying fastest."""
    for path, values in matrix.items():
        if not values:
            raise SweepError(path, "has no values")
        if len(values) > MAX_MATRIX_VALUES:
            raise SweepError(path, f"has more than {MAX_MATRIX_VALUES} values")
    paths = list(matrix)
    return [
        dict(zip(paths, chosen, strict=True))
        for chosen in itertools.product(*(matrix[p] for p in paths))
    ]


def count(matrix: dict[str, list[Any]]) -> int:
    """Jobs the matrix expands to, without building them."""
    total = 1
    for values in matrix.values():
        total *= len(values)
    return total


def expand(spec: dict[str, Any], matrix: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """One spec per combination, each with `labels` set to the values it was given (merged
    over any labels the base spec has)."""
    jobs = []
    for labels in combinations(matrix):
        job = copy.deepcopy(spec)
        for path, value in labels.items():
            set_path(job, path, copy.deepcopy(value))
        job["labels"] = {**(spec.get("labels") or {}), **labels}
        jobs.append(job)
    return jobs


def set_path(document: dict[str, Any], path: str, value: Any) -> None:
    """Sets `value` at a dotted path; objects along the way are created, list indexes must
    exist (a sweep varies passes, it does not invent them)."""
    parts = path.split(".")
    if not path or any(not part for part in parts):
        raise SweepError(path, "is not a dotted path such as passes.0.method")
    node: Any = document
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        where = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise SweepError(path, f"{where}: the spec's list has no item {part!r}")
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
        else:
            raise SweepError(path, f"{where}: the spec has a value, not an object, here")
