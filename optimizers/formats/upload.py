"""What an uploaded model file is, judged by its content, and a description of it.

Accepted: a plain ONNX model; a zip of one `.onnx` file and its external data files; a
`torch.export` program saved with `torch.export.save` (`.pt2`); a TorchScript archive saved
with `torch.jit.save`. A plain `torch.save` pickle is refused with advice on how to export.

Imports neither torch nor onnxruntime, and never unpickles anything: the API runs this on
every upload. Every zip is checked for unsafe member names, links, size and compression
ratio before anything is read from it (`zip_archive.py`).
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path

from optimizers.errors import InvalidModelError, UnsupportedError
from optimizers.formats.detect import detect_format
from optimizers.formats.kinds import UploadFormat, format_label
from optimizers.formats.onnx_structure import slim_copy
from optimizers.formats.onnx_zip import inspect_onnx_zip, load_proto, refuse_own_external_data
from optimizers.formats.torch_export_archive import describe_torch_export
from optimizers.formats.torchscript_archive import describe_torchscript
from optimizers.formats.zip_archive import open_checked_zip, reading_zip
from optimizers.model_info import inspect_model
from optimizers.results import ModelInfo


def inspect_upload(
    path: Path, *, max_total_bytes: int, fields: Mapping[str, str], tmp_dir: Path
) -> ModelInfo:
    """Detect the format of an upload and describe the model, without torch and without
    loading weights. `fields` are the form fields sent with the file."""
    detected = detect_format(path, max_total_bytes=max_total_bytes)
    given = [name for name in ("input_shapes", "input_dtypes") if fields.get(name)]
    if given and detected.format != UploadFormat.torchscript:
        raise InvalidModelError(
            f"the form field(s) {given} only apply to TorchScript uploads; this file is "
            f"{format_label(detected.format)}, which records its input shapes itself"
        )
    if detected.format == UploadFormat.onnx:
        tmp_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="inspect-", dir=tmp_dir) as tmp:
            try:
                structure = slim_copy(path, Path(tmp))
                refuse_own_external_data(load_proto(structure.path, path.name), structure)
                info = inspect_model(structure.path, check_domains=True)
            except (InvalidModelError, UnsupportedError) as exc:
                raise type(exc)(f"not a valid ONNX model: {exc.message}") from exc
        return info.model_copy(update={"size_bytes": path.stat().st_size})
    with open_checked_zip(path, max_total_bytes=max_total_bytes) as archive, reading_zip():
        assert detected.member is not None
        if detected.format == UploadFormat.onnx_zip:
            return inspect_onnx_zip(archive, detected.member, tmp_dir=tmp_dir)
        if detected.format == UploadFormat.torch_export:
            return describe_torch_export(archive, detected.member)
        return describe_torchscript(archive, detected.member, fields)
