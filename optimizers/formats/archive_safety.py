"""What the upload checks refuse for safety, and reading archive members within a fixed
memory budget: a member is never read whole unless it is small, however large it claims or
turns out to be. Imports neither torch nor onnxruntime."""

from __future__ import annotations

import io
import json
import pickletools
import tokenize
import zipfile
from collections.abc import Iterator
from typing import IO, Any, cast

from optimizers.errors import InvalidModelError

#: Most bytes of one text member (JSON, TorchScript code) read into memory.
MAX_TEXT_MEMBER_BYTES = 16 << 20
#: Most bytes of one pickle opcode argument (a string or bytes) read into memory.
MAX_PICKLE_ARGUMENT_BYTES = 1 << 20
#: Most JSON objects and arrays in one member. Parsed JSON takes up to ~250 bytes per
#: container whatever its text size; a 4-layer transformer's .pt2 program has ~4,000.
MAX_JSON_CONTAINERS = 250_000
#: Most Python tokens in one TorchScript code member. `ast.parse` takes up to ~1 KB per
#: token (a file of one-name lines); the largest file of the test and bench models has
#: ~7,000.
MAX_CODE_TOKENS = 100_000


class UnsafeArchiveError(InvalidModelError):
    """A zip or PyTorch archive that modelpress refuses to open for safety."""


class MemberTooLargeError(InvalidModelError):
    """A member that the checks would have to hold in memory is over its budget."""


def printable(text: str) -> str:
    return text.replace("\x00", "\\x00")[:200]


def read_text_member(
    archive: zipfile.ZipFile, name: str, *, limit: int = MAX_TEXT_MEMBER_BYTES
) -> bytes:
    """The bytes of a member that is parsed whole (JSON, code), refused over `limit` whether
    the zip's directory says so or the data turns out longer than declared."""
    info = archive.getinfo(name)
    if info.file_size > limit:
        raise MemberTooLargeError(_too_large(name, limit))
    with archive.open(info) as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise MemberTooLargeError(_too_large(name, limit))
    return data


def parse_json_member(archive: zipfile.ZipFile, name: str) -> Any:
    """A JSON member parsed, refused when its text or its number of containers would take
    more memory than the budget."""
    data = read_text_member(archive, name)
    # Counting brackets inside strings too only makes the bound stricter.
    containers = data.count(b"{") + data.count(b"[")
    if containers > MAX_JSON_CONTAINERS:
        raise MemberTooLargeError(
            f"'{printable(name)}' holds more than {MAX_JSON_CONTAINERS} JSON objects and "
            "arrays, the most modelpress reads of one member"
        )
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise InvalidModelError(f"'{printable(name)}' is not valid JSON: {exc}") from exc


def check_code_size(source: str, name: str) -> None:
    """Refuse code whose syntax tree would take more memory than the budget, counting its
    tokens as a stream first (tokenize holds one line at a time)."""
    count = 0
    try:
        for _ in tokenize.generate_tokens(io.StringIO(source).readline):
            count += 1
            if count > MAX_CODE_TOKENS:
                raise MemberTooLargeError(
                    f"'{printable(name)}' has more than {MAX_CODE_TOKENS} tokens, the most "
                    "modelpress reads of one TorchScript code file"
                )
    except (tokenize.TokenError, SyntaxError) as exc:
        raise InvalidModelError(
            f"'{printable(name)}' is not valid TorchScript code: {exc}"
        ) from exc


def _too_large(name: str, limit: int) -> str:
    return (
        f"'{printable(name)}' is larger than {limit >> 20} MiB, the most modelpress reads of "
        "one metadata or code member of an archive"
    )


class _BoundedPickleStream:
    """A member handle for `pickletools.genops` that refuses an opcode argument larger than
    `limit`: genops reads each argument whole (`read(n)` with n from the pickle, `readline`
    for text opcodes), so a pickle could otherwise make it allocate gigabytes."""

    def __init__(self, handle: IO[bytes], *, name: str, limit: int = MAX_PICKLE_ARGUMENT_BYTES):
        self._handle = handle
        self._name = name
        self._limit = limit
        self._position = 0

    def read(self, size: int = -1) -> bytes:
        if size < 0 or size > self._limit:
            self._refuse()
        data = self._handle.read(size)
        self._position += len(data)
        return data

    def readline(self, size: int = -1) -> bytes:
        line = self._handle.readline(self._limit + 1)
        if len(line) > self._limit:
            self._refuse()
        self._position += len(line)
        return line

    def tell(self) -> int:
        return self._position

    def _refuse(self) -> None:
        raise MemberTooLargeError(
            f"'{printable(self._name)}' holds a pickled value larger than "
            f"{self._limit >> 20} MiB; torch.jit.save keeps tensors out of its pickles, so "
            "modelpress refuses it"
        )


def pickle_opcodes(
    handle: IO[bytes], *, name: str
) -> Iterator[tuple[pickletools.OpcodeInfo, Any, int | None]]:
    """`pickletools.genops` over a member, refusing any argument over
    MAX_PICKLE_ARGUMENT_BYTES. Lists opcodes only; nothing is unpickled."""
    # genops needs only read, readline and tell, which the bounded stream provides.
    return pickletools.genops(cast(IO[bytes], _BoundedPickleStream(handle, name=name)))
