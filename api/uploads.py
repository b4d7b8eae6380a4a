"""Stream a multipart upload to a temporary file: hashed as it arrives, never held in
memory, refused with 413 as soon as it passes the size limit. Temp files that a killed API
process left behind are removed when an API process starts (`sweep_stale_uploads`)."""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from fastapi import Request
from python_multipart.exceptions import FormParserError, MultipartParseError
from python_multipart.multipart import MAX_BOUNDARY_LENGTH, MultipartParser, parse_options_header
from sqlalchemy.orm import Session

from api.errors import Problem
from core.storage import Storage
from core.tables import Dataset, StoredModel

#: Small text fields next to the file (e.g. a name); anything bigger is a client error.
_MAX_FIELD_BYTES = 64 * 1024
#: Uncompressed size allowed for a zip upload (a model or a dataset), as a multiple of the
#: upload limit.
ZIP_EXPANSION_LIMIT = 4
#: Parts of one form: the file and a few small fields (name, input_shapes, model_id, ...).
MAX_PARTS = 32
#: One header line of a part (e.g. Content-Disposition with the file name), and headers per
#: part; python-multipart enforces both while it parses (since 0.0.27, the floor in
#: pyproject.toml).
MAX_PART_HEADER_BYTES = 4096
MAX_PART_HEADERS = 16
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._ -]+")
#: An upload's temp file is created as `upload-*.new`, locked, then renamed to
#: `upload-*.part`; its scratch folder (for inspecting it) is `upload-*.part.d`.
_NEW_SUFFIX = ".new"
_PART_SUFFIX = ".part"
_SCRATCH_SUFFIX = ".d"
#: A `.new` file is locked microseconds after it is created; one older than this and
#: unlocked was left by a process killed in between.
_NEW_FILE_GRACE_S = 60.0

log = logging.getLogger("modelpress.api")


@dataclass
class Upload:
    path: Path
    filename: str
    size_bytes: int
    sha256: str
    fields: dict[str, str] = field(default_factory=dict)
    #: Holds the flock that tells `sweep_stale_uploads` this file is in use.
    lock_fd: int | None = None

    @property
    def scratch_dir(self) -> Path:
        """A folder beside the temp file for work on the upload; removed with it."""
        return _scratch_dir(self.path)

    def discard(self) -> None:
        # Scratch first, then the file, then the lock: a scratch folder without its file,
        # or an unlocked file, is then always stale.
        shutil.rmtree(self.scratch_dir, ignore_errors=True)
        self.path.unlink(missing_ok=True)
        if self.lock_fd is not None:
            os.close(self.lock_fd)
            self.lock_fd = None


def _scratch_dir(part: Path) -> Path:
    return part.with_name(part.name + _SCRATCH_SUFFIX)


def _create_locked_part(tmp_dir: Path) -> tuple[int, Path]:
    """A new, empty upload temp file and a descriptor holding an exclusive flock on it.

    The lock lives as long as the descriptor, so it ends with this process however the
    process ends (even SIGKILL); other API processes sharing the data folder test it to
    tell a live upload from a dead one. The file gets its `.part` name only once locked, so
    no process ever sees an unlocked `.part` file that is still in use."""
    fd, new_name = tempfile.mkstemp(prefix="upload-", suffix=_NEW_SUFFIX, dir=tmp_dir)
    part = Path(new_name[: -len(_NEW_SUFFIX)] + _PART_SUFFIX)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.rename(new_name, part)
    except BaseException:
        os.close(fd)
        Path(new_name).unlink(missing_ok=True)
        raise
    return fd, part


def sweep_stale_uploads(tmp_dir: Path) -> int:
    """Remove the temp files (and scratch folders) of uploads whose API process is gone;
    return how many uploads were removed. Safe while other API processes on the same data
    folder are receiving uploads: a file is removed only when its flock can be taken, which
    is possible only once the process that created it has released it or died."""
    if not tmp_dir.is_dir():
        return 0
    removed = 0
    for part in tmp_dir.glob(f"upload-*{_PART_SUFFIX}"):
        if _remove_if_unlocked(part, min_age_s=0.0):
            removed += 1
    for new in tmp_dir.glob(f"upload-*{_NEW_SUFFIX}"):
        if _remove_if_unlocked(new, min_age_s=_NEW_FILE_GRACE_S):
            removed += 1
    for scratch in tmp_dir.glob(f"upload-*{_PART_SUFFIX}{_SCRATCH_SUFFIX}"):
        # An upload removes its scratch folder before its file, and creates it after.
        if not scratch.with_suffix("").exists():
            shutil.rmtree(scratch, ignore_errors=True)
    return removed


def _remove_if_unlocked(path: Path, *, min_age_s: float) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False  # gone meanwhile, or not a plain file that we made
    try:
        if time.time() - os.fstat(fd).st_mtime < min_age_s:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # a live process is writing or inspecting this upload
        shutil.rmtree(_scratch_dir(path), ignore_errors=True)
        path.unlink(missing_ok=True)
        log.info("removed the temp file of an interrupted upload: %s", path.name)
        return True
    finally:
        os.close(fd)


def safe_filename(raw: str, default: str) -> str:
    """A display name only: the last path component, without control or odd characters."""
    name = raw.replace("\\", "/").split("/")[-1].replace("\x00", "")
    name = _SAFE_NAME.sub("_", name).strip(" .")
    return name[:200] or default


def multipart_body_schema(description: str) -> dict[str, Any]:
    """OpenAPI request body for routes that parse multipart themselves."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file"],
                        "properties": {
                            "file": {
                                "type": "string",
                                "format": "binary",
                                "description": description,
                            },
                            "name": {"type": "string", "description": "Display name (optional)."},
                        },
                    }
                }
            },
        }
    }


async def receive_upload(request: Request, *, tmp_dir: Path, max_bytes: int) -> Upload:
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data" or b"boundary" not in params:
        raise Problem(
            415,
            "send the file as multipart/form-data in a field named 'file'",
            type="unsupported_media_type",
        )
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes + _MAX_FIELD_BYTES:
        raise _too_large(max_bytes)

    boundary = params[b"boundary"]
    if not 0 < len(boundary) <= MAX_BOUNDARY_LENGTH:
        raise Problem(
            400,
            f"the multipart boundary must be 1 to {MAX_BOUNDARY_LENGTH} characters long",
            type="malformed_multipart",
        )

    tmp_dir.mkdir(parents=True, exist_ok=True)
    lock_fd, part = _create_locked_part(tmp_dir)
    # The sink writes through a duplicate, so closing it keeps the lock.
    sink: IO[bytes] = os.fdopen(os.dup(lock_fd), "wb")
    state = _ParseState(sink=sink, max_bytes=max_bytes)
    parser = MultipartParser(
        boundary,
        max_header_count=MAX_PART_HEADERS,
        max_header_size=MAX_PART_HEADER_BYTES,
        callbacks={
            "on_part_begin": state.on_part_begin,
            "on_header_field": state.on_header_field,
            "on_header_value": state.on_header_value,
            "on_header_end": state.on_header_end,
            "on_headers_finished": state.on_headers_finished,
            "on_part_data": state.on_part_data,
            "on_part_end": state.on_part_end,
            "on_end": state.on_end,
        },
    )
    try:
        async for chunk in request.stream():
            try:
                parser.write(chunk)
            except (MultipartParseError, FormParserError) as exc:
                raise state.error or _malformed(exc) from exc
            if state.error is not None:
                raise state.error
        parser.finalize()
        if state.error is not None:
            raise state.error
        if state.parts == 0:
            raise Problem(
                400,
                "the body is not multipart/form-data: it holds no part that starts with the "
                "boundary given in Content-Type",
                type="malformed_multipart",
            )
        if state.file_seen and not state.file_complete:
            raise Problem(
                400, "the upload ended before the file was complete", type="truncated_upload"
            )
        if not state.ended:
            raise Problem(
                400,
                "the upload ended before the multipart body was complete (no closing "
                "boundary); is the request cut off?",
                type="truncated_upload",
            )
        if not state.file_seen:
            raise Problem(422, "the form has no field named 'file'", type="missing_file")
        sink.close()
    except BaseException:
        sink.close()
        part.unlink(missing_ok=True)
        os.close(lock_fd)
        raise
    return Upload(
        path=part,
        filename=state.filename,
        size_bytes=state.file_bytes,
        sha256=state.hasher.hexdigest(),
        fields=state.fields,
        lock_fd=lock_fd,
    )


def _malformed(exc: Exception) -> Problem:
    """python-multipart's parse errors as the client's mistake, with our limits named."""
    message = str(exc)
    if "header size" in message:
        return Problem(
            413,
            f"a part header line is longer than {MAX_PART_HEADER_BYTES} bytes",
            type="part_header_too_large",
        )
    if "header count" in message:
        return Problem(
            413,
            f"a part has more than {MAX_PART_HEADERS} header lines",
            type="part_header_too_large",
        )
    return Problem(400, f"the multipart body is malformed: {message}", type="malformed_multipart")


def _too_large(max_bytes: int) -> Problem:
    return Problem(
        413,
        f"the upload is larger than the limit of {max_bytes} bytes (MODELPRESS_MAX_UPLOAD_BYTES)",
        type="upload_too_large",
    )


class _ParseState:
    def __init__(self, *, sink: IO[bytes], max_bytes: int) -> None:
        self.sink = sink
        self.max_bytes = max_bytes
        self.hasher = hashlib.sha256()
        self.file_bytes = 0
        self.file_seen = False
        self.file_complete = False
        self.filename = ""
        self.fields: dict[str, str] = {}
        self.error: Problem | None = None
        self.parts = 0
        self.ended = False
        self._headers: dict[bytes, bytes] = {}
        self._header_field = b""
        self._header_value = b""
        self._part_name: str | None = None
        self._part_is_file = False
        self._field_buffer = bytearray()

    def on_part_begin(self) -> None:
        self.parts += 1
        if self.parts > MAX_PARTS and self.error is None:
            self.error = Problem(
                413,
                f"the form has more than {MAX_PARTS} parts; send the file and a few fields",
                type="too_many_parts",
            )
        self._headers = {}
        self._part_name = None
        self._part_is_file = False
        self._field_buffer = bytearray()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[self._header_field.lower()] = self._header_value
        self._header_field = b""
        self._header_value = b""

    def on_headers_finished(self) -> None:
        if self.error is not None:
            return
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        self._part_name = name
        if name == "file":
            if self.file_seen:
                self.error = Problem(
                    422, "send exactly one field named 'file'", type="invalid_form"
                )
                return
            self.file_seen = True
            self._part_is_file = True
            self.filename = options.get(b"filename", b"").decode("utf-8", "replace")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.error is not None:
            return
        chunk = data[start:end]
        if self._part_is_file:
            self.file_bytes += len(chunk)
            if self.file_bytes > self.max_bytes:
                self.error = _too_large(self.max_bytes)
                return
            self.hasher.update(chunk)
            self.sink.write(chunk)
        else:
            self._field_buffer += chunk
            if len(self._field_buffer) > _MAX_FIELD_BYTES:
                self.error = Problem(413, "a form field is too large", type="field_too_large")

    def on_end(self) -> None:
        self.ended = True

    def on_part_end(self) -> None:
        if self.error is not None:
            return
        if self._part_is_file:
            self.file_complete = True
        elif self._part_name:
            self.fields[self._part_name] = self._field_buffer.decode("utf-8", "replace")


def keep_upload(
    upload: Upload,
    row: StoredModel | Dataset,
    *,
    session: Session,
    storage: Storage,
    prefix: str,
) -> None:
    """Adds the upload's row, moves its file to the row's storage key and commits. A commit
    that fails deletes what was stored under `prefix`: no file is kept without its row."""
    session.add(row)
    session.flush()
    storage.put_file(row.storage_key, upload.path)
    try:
        session.commit()
    except Exception:
        storage.delete_prefix(prefix)
        raise
