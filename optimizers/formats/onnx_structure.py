"""A copy of an ONNX model's structure without its tensor bytes, made in bounded memory.

`onnx.load` reads a whole model into memory and parses it (twice the file's size), and the
checker parses it again; for a 2 GB upload that is gigabytes in the API process. This reads
the protobuf wire format as a stream instead and writes a copy in which every large
`raw_data` field is replaced by an external-data reference to the same offsets in a file
beside the copy, under a name no model can guess. That file is an empty sparse file of the
original's size: the ONNX checker only checks that the referenced bytes exist, so no
tensor byte is read or written to describe the graph. The copy holds the graph (nodes,
attributes, shapes, names) and is what the upload checks load and check.

Only the path to tensors is descended (model -> graph -> initializers, node attributes and
their subgraphs, functions); every other field is copied as it is, and the copy may not
grow past MAX_STRUCTURE_BYTES. Imports neither torch nor onnxruntime.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from optimizers.errors import InvalidModelError
from optimizers.formats.archive_safety import MemberTooLargeError

#: Most bytes of a model's structure (everything but large raw tensor data) that the checks
#: hold in memory.
MAX_STRUCTURE_BYTES = 16 << 20
#: raw_data fields at least this long are left in the original file.
RELOCATE_MIN_BYTES = 1024
#: Deepest nesting of graphs (the main graph, If/Loop bodies inside each other) that is
#: read; protobuf itself stops parsing at 100 nested messages, about 30 graphs.
MAX_GRAPH_DEPTH = 16

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
_TENSOR_RAW_DATA = 9
_TENSOR_EXTERNAL_DATA = 13
_TENSOR_DATA_LOCATION = 14
_EXTERNAL = 1

#: For each message on the way to tensors: field number -> message type of that field.
_SCHEMA: dict[str, dict[int, str]] = {
    "model": {7: "graph", 20: "training_info", 25: "function"},
    "training_info": {1: "graph", 2: "graph"},
    "graph": {1: "node", 5: "tensor", 15: "sparse_tensor"},
    "function": {7: "node"},
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse_tensor",
                  23: "sparse_tensor"},
    "sparse_tensor": {1: "tensor", 2: "tensor"},
    "tensor": {},
}  # fmt: skip


@dataclass(frozen=True)
class Structure:
    """The slim copy (`path`) and the name its relocated tensors refer to (`data_location`),
    a sparse stand-in for the original model beside it."""

    path: Path
    data_location: str
    relocated_tensors: int


class _TooLarge(Exception):
    pass


class _Reader:
    def __init__(self, handle: BinaryIO, size: int) -> None:
        self.handle = handle
        self.size = size
        self.position = 0
        self.kept = 0

    def varint(self, end: int) -> int:
        result = shift = 0
        while True:
            if self.position >= end or shift > 63:
                raise InvalidModelError("the file is not an ONNX model (a broken varint)")
            byte = self.handle.read(1)
            if not byte:
                raise InvalidModelError("the ONNX model is cut off; is the file complete?")
            self.position += 1
            result |= (byte[0] & 0x7F) << shift
            shift += 7
            if not byte[0] & 0x80:
                return result

    def keep(self, length: int, end: int) -> bytes:
        """Read `length` bytes that go into the copy, within the memory budget."""
        if self.position + length > end:
            raise InvalidModelError(
                "the ONNX model is cut off or malformed (a field runs past its end)"
            )
        self.kept += length
        if self.kept > MAX_STRUCTURE_BYTES:
            raise _TooLarge
        data = self.handle.read(length)
        if len(data) != length:
            raise InvalidModelError("the ONNX model is cut off; is the file complete?")
        self.position += length
        return data

    def skip(self, length: int, end: int) -> None:
        if self.position + length > end:
            raise InvalidModelError(
                "the ONNX model is cut off or malformed (a field runs past its end)"
            )
        self.position += length
        self.handle.seek(self.position)


def _varint_bytes(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, wire_type: int) -> bytes:
    return _varint_bytes(number << 3 | wire_type)


def _length_delimited(number: int, payload: bytes) -> bytes:
    return _field(number, _LEN) + _varint_bytes(len(payload)) + payload


def _entry(key: str, value: str) -> bytes:
    body = _length_delimited(1, key.encode()) + _length_delimited(2, value.encode())
    return _length_delimited(_TENSOR_EXTERNAL_DATA, body)


class _Slimmer:
    def __init__(self, reader: _Reader, data_location: str) -> None:
        self.reader = reader
        self.data_location = data_location
        self.relocated = 0

    def message(self, kind: str, end: int, depth: int) -> bytes:
        if kind == "graph":
            depth += 1
            if depth > MAX_GRAPH_DEPTH:
                raise InvalidModelError(
                    f"the ONNX model nests graphs more than {MAX_GRAPH_DEPTH} deep"
                )
        reader = self.reader
        schema = _SCHEMA[kind]
        parts: list[bytes] = []
        relocated: tuple[int, int] | None = None
        while reader.position < end:
            key = reader.varint(end)
            number, wire_type = key >> 3, key & 7
            if wire_type == _VARINT:
                parts.append(_varint_bytes(key) + _varint_bytes(reader.varint(end)))
            elif wire_type in (_I64, _I32):
                parts.append(_varint_bytes(key) + reader.keep(8 if wire_type == _I64 else 4, end))
            elif wire_type == _LEN:
                length = reader.varint(end)
                if kind == "tensor" and number == _TENSOR_RAW_DATA and length >= RELOCATE_MIN_BYTES:
                    relocated = (reader.position, length)
                    reader.skip(length, end)
                elif number in schema:
                    child_end = reader.position + length
                    if child_end > end:
                        raise InvalidModelError(
                            "the ONNX model is malformed (a message runs past its end)"
                        )
                    child = self.message(schema[number], child_end, depth)
                    parts.append(_length_delimited(number, child))
                else:
                    parts.append(
                        _varint_bytes(key) + _varint_bytes(length) + reader.keep(length, end)
                    )
            else:
                raise InvalidModelError(f"the file is not an ONNX model (wire type {wire_type})")
        if relocated is not None:
            offset, length = relocated
            self.relocated += 1
            parts.append(_entry("location", self.data_location))
            parts.append(_entry("offset", str(offset)))
            parts.append(_entry("length", str(length)))
            parts.append(_field(_TENSOR_DATA_LOCATION, _VARINT) + _varint_bytes(_EXTERNAL))
        return b"".join(parts)


def slim_copy(model: Path, dest_dir: Path) -> Structure:
    """Write the structure of the ONNX model at `model` into `dest_dir`, beside the sparse
    stand-in that its relocated tensors refer to. Raises MemberTooLargeError when the
    structure is over MAX_STRUCTURE_BYTES and InvalidModelError for a malformed file."""
    token = secrets.token_hex(8)
    data_location = f"tensor-data-{token}.bin"
    dest_dir.mkdir(parents=True, exist_ok=True)
    size = model.stat().st_size
    with (dest_dir / data_location).open("xb") as stand_in:
        stand_in.truncate(size)
    with model.open("rb") as handle:
        slimmer = _Slimmer(_Reader(handle, size), data_location)
        try:
            body = slimmer.message("model", size, 0)
        except _TooLarge:
            raise MemberTooLargeError(
                f"the ONNX model's graph (all but its raw tensor data) is larger than "
                f"{MAX_STRUCTURE_BYTES >> 20} MiB, the most modelpress inspects; store large "
                "tensors as raw_data (as torch.onnx.export and onnx.save do)"
            ) from None
    path = dest_dir / f"structure-{token}.onnx"
    path.write_bytes(body)
    return Structure(path=path, data_location=data_location, relocated_tensors=slimmer.relocated)
