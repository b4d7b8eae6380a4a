"""The ONNX model a job runs on, whatever was uploaded: the file itself, the model extracted
from an ONNX zip with its external data, or a PyTorch program (`.pt2`, TorchScript)
converted in the job's process."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optimizers.errors import InvalidModelError
from optimizers.formats.kinds import UploadFormat
from optimizers.formats.onnx_zip import extract_onnx_zip
from optimizers.results import ModelInfo, ProgressFn, no_progress


@dataclass(frozen=True)
class OnnxModel:
    path: Path
    #: What it came from, for the result: `format`, `converted`, and for a conversion its
    #: exporter and versions.
    source: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def to_onnx(
    path: Path,
    format: str,
    *,
    info: Mapping[str, Any],
    workdir: Path,
    max_total_bytes: int,
    progress: ProgressFn = no_progress,
) -> OnnxModel:
    """The upload at `path` (of `format`; `info` is its description from upload time, a
    ModelInfo as JSON, read for conversions) as an ONNX file; extracted or converted files go
    to `workdir`."""
    if format == UploadFormat.onnx:
        return OnnxModel(path, {"format": format, "converted": False})
    if format == UploadFormat.onnx_zip:
        progress("loading", 0.02, "extracting the model and its external data")
        extracted = extract_onnx_zip(path, workdir, max_total_bytes=max_total_bytes)
        return OnnxModel(extracted, {"format": format, "converted": False})
    if format in (UploadFormat.torch_export, UploadFormat.torchscript):
        # Imported here: only PyTorch uploads need torch.
        from optimizers.formats.torch_to_onnx import convert_to_onnx

        progress("loading", 0.02, f"converting the {format} program to ONNX")
        conversion = convert_to_onnx(
            path, ModelInfo.model_validate(info), workdir, max_total_bytes=max_total_bytes
        )
        return OnnxModel(conversion.model_path, conversion.source, conversion.notes)
    raise InvalidModelError(f"the model has an unknown format '{format}'")
