"""ONNX external data: where a model's tensors live outside the .onnx file, and checks that
those places are safe relative paths. Imports neither torch nor onnxruntime."""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import onnx

from optimizers.errors import InvalidModelError


@dataclass(frozen=True)
class ExternalTensor:
    tensor: str
    location: str
    offset: int
    length: int | None  # None: to the end of the file


def external_data_locations(model: onnx.ModelProto) -> dict[str, list[ExternalTensor]]:
    """Every external-data file the model refers to (as written in the model), with the
    tensors stored in it. Subgraphs and sparse initializers are included."""
    found: dict[str, list[ExternalTensor]] = {}
    for tensor in _all_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        entries = {item.key: item.value for item in tensor.external_data}
        location = entries.get("location", "")
        try:
            offset = int(entries.get("offset") or 0)
            length = int(entries["length"]) if entries.get("length") else None
        except ValueError:
            raise InvalidModelError(
                f"tensor '{tensor.name}' has a non-numeric external data offset or length"
            ) from None
        if offset < 0 or (length is not None and length < 0):
            raise InvalidModelError(
                f"tensor '{tensor.name}' has a negative external data offset or length"
            )
        found.setdefault(location, []).append(
            ExternalTensor(tensor=tensor.name, location=location, offset=offset, length=length)
        )
    return found


def has_external_data(path: Path) -> bool:
    model = onnx.load(str(path), load_external_data=False)
    return bool(external_data_locations(model))


def model_size_bytes(path: Path) -> int:
    """Bytes on disk of an ONNX model: the .onnx file plus the external data files it uses."""
    model = onnx.load(str(path), load_external_data=False)
    total = path.stat().st_size
    for location in external_data_locations(model):
        data_path = path.parent / check_relative_location(location, what="external data")
        total += data_path.stat().st_size
    return total


def check_relative_location(location: str, *, what: str) -> str:
    """Return `location` normalized to forward slashes if it is a safe relative path (no
    absolute path, no '..', no backslash, no NUL, no drive letter); raise otherwise."""
    problem = unsafe_path_reason(location)
    if problem:
        raise InvalidModelError(f"{what} '{_printable(location)}' is not allowed: {problem}")
    return location


def unsafe_path_reason(name: str) -> str | None:
    """Why `name` is not a safe relative path inside a folder, or None when it is."""
    if not name:
        return "the path is empty"
    if "\x00" in name:
        return "the path contains a NUL character"
    if "\\" in name:
        return "the path contains a backslash"
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return "the path is absolute"
    parts = name.rstrip("/").split("/")
    if any(part == ".." for part in parts):
        return "the path contains '..'"
    if any(part in ("", ".") for part in parts):
        return "the path has an empty or '.' component"
    return None


def check_external_data(
    model: onnx.ModelProto, *, model_dir: str, file_sizes: dict[str, int]
) -> dict[str, list[ExternalTensor]]:
    """Check that every external-data reference of `model` is a safe relative path that
    names a file in `file_sizes` (POSIX paths relative to the archive root, with the model in
    `model_dir`), and that each tensor's offset and length fit inside that file."""
    locations = external_data_locations(model)
    for location, tensors in locations.items():
        check_relative_location(location, what="the external data location")
        member = posixpath.join(model_dir, location) if model_dir else location
        if member not in file_sizes:
            raise InvalidModelError(
                f"tensor '{tensors[0].tensor}' keeps its data in '{location}', which is not in "
                "the upload; zip the .onnx file together with all its external data files"
            )
        size = file_sizes[member]
        for entry in tensors:
            end = entry.offset + (entry.length or 0)
            if entry.offset > size or end > size:
                raise InvalidModelError(
                    f"tensor '{entry.tensor}' needs bytes {entry.offset}..{end} of "
                    f"'{location}', but that file has only {size} bytes; is it complete?"
                )
    return locations


def _all_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    yield from _graph_tensors(model.graph)
    for function in model.functions:
        for node in function.node:
            yield from _node_tensors(node)


def _graph_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        yield from _node_tensors(node)


def _node_tensors(node: onnx.NodeProto) -> Iterator[onnx.TensorProto]:
    for attribute in node.attribute:
        if attribute.HasField("t"):
            yield attribute.t
        yield from attribute.tensors
        if attribute.HasField("sparse_tensor"):
            yield attribute.sparse_tensor.values
            yield attribute.sparse_tensor.indices
        if attribute.HasField("g"):
            yield from _graph_tensors(attribute.g)
        for graph in attribute.graphs:
            yield from _graph_tensors(graph)


def _printable(text: str) -> str:
    return text.replace("\x00", "\\x00")[:200]


#: Models above this size must keep their tensors outside the .onnx file (protobuf's 2 GB
#: limit on one message).
EXTERNAL_DATA_THRESHOLD = 1_800_000_000


def needs_external_data(path: Path) -> bool:
    """Whether a model made from the one at `path` should be saved with external data: the
    input keeps its tensors in external files, or it is too large for one protobuf."""
    return has_external_data(path) or model_size_bytes(path) > EXTERNAL_DATA_THRESHOLD


def data_file_for(path: Path) -> Path:
    """The single external data file written for a model saved at `path`."""
    return path.with_name(f"{path.name}.data")


def save_model(model: onnx.ModelProto, path: Path, *, external_data: bool) -> Path:
    """Save `model` at `path`. With `external_data`, every tensor of 1 KiB or more goes to
    one file '<name>.data' beside it (a relative location), replacing an older one; note
    that onnx then moves the tensors' bytes out of `model` itself."""
    if not external_data:
        onnx.save_model(model, str(path))
        return path
    data = data_file_for(path)
    data.unlink(missing_ok=True)  # onnx appends to an existing data file
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=data.name,
        size_threshold=1024,
        convert_attribute=False,
    )
    return path
