"""An ONNX model in a zip with its external data files: described at upload, extracted
(every member checked) in the job."""

from __future__ import annotations

import os
import posixpath
import tempfile
import zipfile
from pathlib import Path

import onnx

from optimizers.errors import InvalidModelError, UnsupportedError
from optimizers.external_data import (
    check_external_data,
    external_data_locations,
    unsafe_path_reason,
)
from optimizers.formats.archive_safety import (
    UnsafeArchiveError,
    printable,
)
from optimizers.formats.detect import detect_zip
from optimizers.formats.kinds import UploadFormat
from optimizers.formats.onnx_structure import Structure, slim_copy
from optimizers.formats.zip_archive import member_sizes, open_checked_zip, reading_zip
from optimizers.model_info import inspect_model
from optimizers.results import ModelInfo


def inspect_onnx_zip(archive: zipfile.ZipFile, member: str, *, tmp_dir: Path) -> ModelInfo:
    files = member_sizes(archive)
    model_dir = posixpath.dirname(member)
    tmp_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="inspect-", dir=tmp_dir) as tmp:
        root = Path(tmp)
        model_path = _extract_member(archive, member, root)
        structure = slim_copy(model_path, model_path.parent)
        proto = load_proto(structure.path, member)
        # The structure's own references point into the extracted model itself.
        relocated = posixpath.join(model_dir, structure.data_location)
        sizes = {**files, relocated: model_path.stat().st_size}
        locations = check_external_data(proto, model_dir=model_dir, file_sizes=sizes)
        for location in locations:
            if location == structure.data_location:
                continue
            data_member = posixpath.join(model_dir, location) if model_dir else location
            if data_member == member:
                raise InvalidModelError(f"external data location '{location}' is the model itself")
            # The checker wants each data file to exist; an empty sparse file of the right
            # size stands in, so no weight is read or written to describe the graph.
            placeholder = _inside(root, data_member)
            placeholder.parent.mkdir(parents=True, exist_ok=True)
            with placeholder.open("wb") as handle:
                handle.truncate(files[data_member])
        try:
            info = inspect_model(structure.path, check_domains=True)
        except (InvalidModelError, UnsupportedError) as exc:
            raise type(exc)(f"not a valid ONNX model: {exc.message}") from exc
    total = sum(files.values())
    return info.model_copy(update={"format": UploadFormat.onnx_zip.value, "size_bytes": total})


def extract_onnx_zip(path: Path, dest: Path, *, max_total_bytes: int) -> Path:
    """Extract the ONNX model of a zip upload and the data files it refers to into `dest`
    (checked again here: names, links, sizes); return the .onnx path. Nothing else in the
    zip is written."""
    with open_checked_zip(path, max_total_bytes=max_total_bytes) as archive, reading_zip():
        detected = detect_zip(archive)
        if detected.format != UploadFormat.onnx_zip or detected.member is None:
            raise InvalidModelError("the zip does not hold an ONNX model")
        member = detected.member
        files = member_sizes(archive)
        dest.mkdir(parents=True, exist_ok=True)
        model_path = _extract_member(archive, member, dest)
        proto = load_proto(model_path, member)
        model_dir = posixpath.dirname(member)
        for location in check_external_data(proto, model_dir=model_dir, file_sizes=files):
            data_member = posixpath.join(model_dir, location) if model_dir else location
            if data_member != member:
                _extract_member(archive, data_member, dest)
    return model_path


def _inside(root: Path, name: str) -> Path:
    reason = unsafe_path_reason(name)
    if reason:
        raise UnsafeArchiveError(f"'{printable(name)}' is not allowed: {reason}")
    target = root / name
    resolved_root = root.resolve()
    if not target.resolve().is_relative_to(resolved_root):
        raise UnsafeArchiveError(f"'{printable(name)}' points outside the extraction folder")
    return target


def _extract_member(archive: zipfile.ZipFile, name: str, root: Path) -> Path:
    """Write one member under `root` as a new regular file; never through a link."""
    info = archive.getinfo(name)
    target = _inside(root, name)
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.parent.resolve().is_relative_to(root.resolve()):
        raise UnsafeArchiveError(f"'{printable(name)}' points outside the extraction folder")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(target, flags, 0o600)
    written = 0
    with os.fdopen(fd, "wb") as sink, archive.open(info) as source:
        for block in iter(lambda: source.read(1 << 20), b""):
            written += len(block)
            if written > info.file_size:
                raise UnsafeArchiveError(f"'{name}' is larger than the zip says")
            sink.write(block)
    return target


def refuse_own_external_data(proto: onnx.ModelProto, structure: Structure) -> None:
    """A lone .onnx upload has no files beside it that its tensors may refer to."""
    for location, tensors in external_data_locations(proto).items():
        if location != structure.data_location:
            raise InvalidModelError(
                f"tensor '{tensors[0].tensor}' keeps its data in a separate file "
                f"('{printable(location)}'), which a single .onnx upload cannot bring; upload "
                "a zip of the .onnx file and its external data files"
            )


def load_proto(path: Path, member: str) -> onnx.ModelProto:
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise InvalidModelError(
            f"'{member}' in the zip is not an ONNX model (protobuf parsing failed: {exc})"
        ) from exc
