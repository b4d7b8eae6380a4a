"""Downloads from storage with ETag (the sha256) and single-range Range requests."""

from __future__ import annotations

import re

from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from api.errors import Problem
from core.storage import Storage
from core.tables import Artifact, Dataset, StoredModel

_RANGE = re.compile(r"bytes=(\d*)-(\d*)")
#: Any position with more digits lies past the end of every object (and Python refuses to
#: parse integers of over 4,300 digits).
_MAX_DIGITS = 18
_UNSATISFIABLE = (-1, -1)


def _position(digits: str) -> int:
    return int(digits) if len(digits) <= _MAX_DIGITS else 10**_MAX_DIGITS


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """(first, last) byte of a single range, `_UNSATISFIABLE`, or None to serve the whole
    object: RFC 9110 lets a server ignore a Range it does not understand (several ranges, a
    unit other than bytes, a malformed or backwards range)."""
    match = _RANGE.fullmatch(header.strip())
    if match is None or not (match.group(1) or match.group(2)):
        return None
    first, last = match.group(1), match.group(2)
    if first:
        start = _position(first)
        if last and _position(last) < start:
            return None
        end = min(_position(last), size - 1) if last else size - 1
    else:  # suffix range: the last N bytes
        start, end = max(size - _position(last), 0), size - 1
    if start >= size or start > end:
        return _UNSATISFIABLE
    return start, end


def download_response(
    request: Request,
    storage: Storage,
    *,
    key: str,
    size: int,
    sha256: str,
    filename: str,
    content_type: str = "application/octet-stream",
) -> Response:
    etag = f'"{sha256}"'
    headers = {
        "ETag": etag,
        "Accept-Ranges": "bytes",
        "Content-Disposition": f'attachment; filename="{filename}"',
    }
    if_none_match = request.headers.get("if-none-match")
    if if_none_match and etag in [t.strip() for t in if_none_match.split(",")]:
        return Response(status_code=304, headers=headers)

    start, end = 0, size - 1
    status = 200
    range_header = request.headers.get("range")
    if_range = request.headers.get("if-range")
    if range_header and (if_range is None or if_range.strip() == etag):
        wanted = _parse_range(range_header, size)
        if wanted == _UNSATISFIABLE:
            raise Problem(
                416,
                f"the range {range_header[:100]!r} is outside the {size}-byte object",
                type="range_not_satisfiable",
                headers={"Content-Range": f"bytes */{size}"},
            )
        if wanted is not None:
            start, end = wanted
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    headers["Content-Length"] = str(end - start + 1 if size else 0)
    body = storage.iter_range(key, start, end) if size else iter(())
    return StreamingResponse(body, status_code=status, headers=headers, media_type=content_type)


def stored_file_response(
    request: Request, storage: Storage, row: StoredModel | Dataset | Artifact
) -> Response:
    """The content of an uploaded model or dataset, or of an artifact, with its ETag and
    Range support."""
    return download_response(
        request,
        storage,
        key=row.storage_key,
        size=row.size_bytes,
        sha256=row.sha256,
        filename=row.name,
        content_type=row.content_type if isinstance(row, Artifact) else "application/octet-stream",
    )
