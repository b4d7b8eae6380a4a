"""What the pool process and the confined job process say to each other: one JSON object
per line on a pipe, and files in the job's scratch folder named by paths relative to it.

Both sides import this module; the confined side must never import the service (`core`),
so this module imports only the standard library.
"""

from __future__ import annotations

import json
import os
import re
import select
from pathlib import PurePosixPath
from typing import Any

#: Inside the sandbox the scratch folder is mounted here.
SANDBOX_SCRATCH = "/job"
#: The job's request, written by the pool process before the job starts.
REQUEST_FILE = "request.json"
#: The job process's own stdout and stderr.
LOG_FILE = "job.log"
#: A line longer than this is a broken (or hostile) job process.
MAX_LINE_BYTES = 8 * 1024 * 1024

#: Error types the job process may report; anything else reads as internal_error.
MEMORY_LIMIT = "memory_limit"
FILE_SIZE_LIMIT = "file_size_limit"
INTERNAL_ERROR = "internal_error"

_SAFE_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


class ProtocolError(Exception):
    """A message that does not follow the protocol: the job process is broken or hostile."""


def check_relative(path: str) -> str:
    """A path inside the scratch folder as the job process names it: relative, plain parts."""
    parts = PurePosixPath(path).parts
    if not parts or len(parts) > 16 or not all(_SAFE_PART.match(part) for part in parts):
        raise ProtocolError(f"invalid scratch path {path[:200]!r}")
    return path


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, allow_nan=False, separators=(",", ":")).encode() + b"\n"


def write_message(fd: int, message: dict[str, Any]) -> None:
    data = encode(message)
    while data:
        written = os.write(fd, data)
        data = data[written:]


class LineReader:
    """Reads JSON lines from a non-blocking pipe without ever holding more than one line."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._buffer = b""
        self.closed = False

    def read_available(self) -> list[dict[str, Any]]:
        """Every complete message readable now; sets `closed` at end of file."""
        messages: list[dict[str, Any]] = []
        while not self.closed:
            try:
                chunk = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                break
            if not chunk:
                self.closed = True
                break
            self._buffer += chunk
            *lines, self._buffer = self._buffer.split(b"\n")
            if len(self._buffer) > MAX_LINE_BYTES:
                raise ProtocolError("a message longer than the limit")
            messages.extend(_decode(line) for line in lines if line.strip())
        return messages


def _decode(line: bytes) -> dict[str, Any]:
    try:
        message = json.loads(line)
    except ValueError as exc:
        raise ProtocolError(f"a line that is not JSON: {line[:200]!r}") from exc
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ProtocolError(f"a message without a type: {line[:200]!r}")
    return message


def wait_readable(handles: list[Any], timeout: float) -> None:
    """Waits until one of `handles` (file descriptors, or objects with `fileno()`) can be read,
    or `timeout` seconds. poll, not select: select cannot watch a descriptor numbered 1,024 or
    above, which a long-lived worker process can reach."""
    poller = select.poll()
    for handle in handles:
        poller.register(handle, select.POLLIN)
    poller.poll(max(0.0, timeout) * 1000)
