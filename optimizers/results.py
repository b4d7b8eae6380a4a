"""Plain data exchanged between the library and its callers. Imports neither torch nor
onnxruntime, so the API can describe models and datasets with it."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel, field_validator

if TYPE_CHECKING:
    from optimizers.batching import BatchLayout

#: A dimension is a fixed size, a symbolic name (e.g. "batch"), or None when unknown. Some
#: exporters write a dynamic dimension as -1 (or 0): those are read as None, never as sizes.
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

    @field_validator("shape")
    @classmethod
    def _dynamic_sizes(cls, shape: list[Dim]) -> list[Dim]:
        # Descriptions stored before -1 was read as dynamic are corrected when they are read.
        return [None if isinstance(dim, int) and dim <= 0 else dim for dim in shape]


class ModelInfo(BaseModel):
    format: str  # "onnx"
    opset: int | None
    ir_version: int | None
    producer: str | None
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    parameter_count: int
    size_bytes: int
    #: How many nodes of each op type the main graph has (ONNX uploads; None when unknown,
    #: e.g. a PyTorch upload before its conversion).
    op_types: dict[str, int] | None = None


class ArrayInfo(BaseModel):
    dtype: str
    shape: list[int]  # first axis is the sample axis


class DatasetInfo(BaseModel):
    arrays: dict[str, ArrayInfo]  # "labels" excluded
    num_samples: int
    has_labels: bool
    label_dtype: str | None = None
    size_bytes: int


class Checkpoints(Protocol):
    """Files a pass keeps across attempts of the same job (e.g. one per training epoch), so a
    retried job resumes instead of starting over. Names are plain file names."""

    def load(self, name: str, dest: Path) -> Path | None:
        """Copy the checkpoint `name` to `dest` and return `dest`, or None if there is none."""
        ...

    def save(self, name: str, path: Path) -> None:
        """Store the file at `path` as checkpoint `name`, replacing an earlier one."""
        ...


class NoCheckpoints:
    """Nothing is kept: every attempt starts over."""

    def load(self, name: str, dest: Path) -> Path | None:
        return None

    def save(self, name: str, path: Path) -> None:
        return None


class DirectoryCheckpoints:
    """Checkpoints in a local folder that outlives the attempt."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def load(self, name: str, dest: Path) -> Path | None:
        source = self.directory / name
        if not source.is_file():
            return None
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(source.read_bytes())
        return dest

    def save(self, name: str, path: Path) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        partial = self.directory / f".{name}.partial"
        partial.write_bytes(path.read_bytes())
        partial.replace(self.directory / name)


class PrefixedCheckpoints:
    """One pass's view of a job's checkpoints: names get `prefix`, so passes never collide."""

    def __init__(self, inner: Checkpoints, prefix: str) -> None:
        self.inner = inner
        self.prefix = prefix

    def load(self, name: str, dest: Path) -> Path | None:
        return self.inner.load(f"{self.prefix}{name}", dest)

    def save(self, name: str, path: Path) -> None:
        self.inner.save(f"{self.prefix}{name}", path)


@dataclass
class PassContext:
    workdir: Path
    datasets: Mapping[str, Path]  # dataset id -> .npz file
    progress: ProgressFn = no_progress
    #: fraction of the whole job where this pass starts and ends, for progress reports
    progress_span: tuple[float, float] = (0.0, 1.0)
    #: other uploaded models the pass reads (e.g. a distillation student): id -> ONNX file
    models: Mapping[str, Path] = field(default_factory=dict)
    #: where training passes keep per-epoch checkpoints across attempts
    checkpoints: Checkpoints = field(default_factory=NoCheckpoints)
    #: "cpu" or "cuda": where training runs (the job's benchmark device)
    device: str = "cpu"
    #: The spec's declared batch axes (input name -> axis, None: no batch axis); inputs not
    #: named follow the model (optimizers.batching decides).
    batch_axes: Mapping[str, int | None] = field(default_factory=dict)
    #: A folder of kept static-quantization calibrations (optimizers.quantization.
    #: calibration_cache): a calibration already there is read instead of measured, a new
    #: one is added. None: every static pass calibrates and keeps nothing.
    calibration_cache: Path | None = None
    #: sha256 of dataset files by id, when the caller knows them (so that a kept calibration
    #: is found without reading the dataset); a dataset not named here is hashed.
    dataset_sha256: Mapping[str, str] = field(default_factory=dict)


@dataclass
class PassResult:
    model_path: Path
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    #: Extra files for the user, by artifact kind (e.g. "sensitivity" -> a JSON report).
    artifacts: dict[str, Path] = field(default_factory=dict)


@dataclass(frozen=True)
class ReportContext:
    """What a pass's report step (`PassConfig.report`) may use to measure the pass's output
    against its input, after the pass ran."""

    #: The pass's number in the spec (1-based) and its folder, where its reports go.
    number: int
    workdir: Path
    #: The job's original model and datasets (id -> .npz file).
    model: ModelInfo
    datasets: Mapping[str, Path]
    #: The spec's evaluate dataset, if any, and its benchmark input shapes.
    evaluate_dataset_id: str | None
    input_shapes: dict[str, list[int]] | None
    layout: BatchLayout
    provider: str
    threads: int
    progress: ProgressFn = no_progress
    #: Fraction of the whole job at which the report step starts.
    progress_at: float = 0.0
