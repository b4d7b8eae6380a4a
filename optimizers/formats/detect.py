"""Which format an upload is, judged by its content: the first bytes, then a zip's members."""

from __future__ import annotations

import zipfile
from collections.abc import Mapping
from pathlib import Path

from optimizers.errors import InvalidModelError
from optimizers.formats.archive_safety import (
    UnsafeArchiveError,
)
from optimizers.formats.kinds import EXPORT_ADVICE, Detected, UploadFormat
from optimizers.formats.zip_archive import member_sizes, open_checked_zip


def detect_format(path: Path, *, max_total_bytes: int) -> Detected:
    """Classify an upload by its content. Raises InvalidModelError (422 material) for a
    pickle, an unsafe or unknown zip, or an empty file."""
    with path.open("rb") as handle:
        head = handle.read(4)
    if not head:
        raise InvalidModelError("the uploaded file is empty")
    if head in (b"PK\x03\x04", b"PK\x05\x06"):
        with open_checked_zip(path, max_total_bytes=max_total_bytes) as archive:
            return detect_zip(archive)
    if head[:1] == b"\x80":
        raise InvalidModelError(
            "the file is a Python pickle (a legacy torch.save file). modelpress does not load "
            "pickles: they can run arbitrary code and do not hold the model's program, only "
            f"its weights; {EXPORT_ADVICE}"
        )
    return Detected(UploadFormat.onnx)


def detect_zip(archive: zipfile.ZipFile) -> Detected:
    files = member_sizes(archive)
    roots = {name.split("/", 1)[0] for name in files if "/" in name}
    for root in sorted(roots):
        if f"{root}/archive_format" in files:
            return Detected(UploadFormat.torch_export, _check_single_root(files, root))
        has_code = any(name.startswith(f"{root}/code/") for name in files)
        if has_code and (f"{root}/constants.pkl" in files or f"{root}/data.pkl" in files):
            return Detected(UploadFormat.torchscript, _check_single_root(files, root))
        if f"{root}/data.pkl" in files:
            raise InvalidModelError(
                "the file was written by torch.save (a pickled object such as a state dict or "
                "a whole nn.Module). modelpress does not load pickles: they can run arbitrary "
                f"code and a state dict does not hold the model's program; {EXPORT_ADVICE}"
            )
    onnx_members = sorted(name for name in files if name.lower().endswith(".onnx"))
    if len(onnx_members) == 1:
        return Detected(UploadFormat.onnx_zip, onnx_members[0])
    if len(onnx_members) > 1:
        raise InvalidModelError(
            f"the zip holds {len(onnx_members)} .onnx files ({', '.join(onnx_members[:5])}); "
            "put exactly one ONNX model in the zip, with its external data files"
        )
    raise InvalidModelError(
        "the zip is neither an ONNX model with its external data (no .onnx file inside), nor "
        "a torch.export (.pt2) or TorchScript archive"
    )


def _check_single_root(files: Mapping[str, int], root: str) -> str:
    stray = [name for name in files if not name.startswith(f"{root}/")]
    if stray:
        raise UnsafeArchiveError(
            f"the PyTorch archive has entries outside its folder '{root}/' (e.g. '{stray[0]}')"
        )
    return root
