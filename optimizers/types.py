"""Plain data exchanged between the library and its callers. Imports neither torch nor
onnxruntime, so the API can describe models and datasets with it."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

#: A dimension is a fixed size, a symbolic name (e.g. "batch"), or None when unknown.
Dim = int | str | None

#: progress(stage, fraction 0..1 of the whole job, message). A caller may raise from it
#: (for example to cancel); the exception propagates out of the library unchanged.
ProgressFn = Callable[[str, float, str], None]


def no_progress(stage: str, fraction: float, message: str) -> None:
    return None


class TensorInfo(BaseModel):
    name: str
    dtype: str  # numpy spelling: "float32", "int64", ...
    shape: list[Dim]


class ModelInfo(BaseModel):
    format: str  # "onnx"
    opset: int | None
    ir_version: int | None
    producer: str | None
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    parameter_count: int
    size_bytes: int


class ArrayInfo(BaseModel):
    dtype: str
    shape: list[int]  # first axis is the sample axis


class DatasetInfo(BaseModel):
    arrays: dict[str, ArrayInfo]  # "labels" excluded
    num_samples: int
    has_labels: bool
    label_dtype: str | None = None
    size_bytes: int


@dataclass
class PassContext:
    workdir: Path
    datasets: Mapping[str, Path]  # dataset id -> .npz file
    progress: ProgressFn = no_progress
    #: fraction of the whole job where this pass starts and ends, for progress reports
    progress_span: tuple[float, float] = (0.0, 1.0)


@dataclass
class PassResult:
    model_path: Path
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    #: Extra files for the user, by artifact kind (e.g. "sensitivity" -> a JSON report).
    artifacts: dict[str, Path] = field(default_factory=dict)
