"""Downloads from storage with ETag (the sha256) and single-range Range requests."""

from __future__ import annotations

import re

from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from api.errors import Problem
from core.storage import Storage

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


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
        match = _RANGE.match(range_header.strip())
        # Multiple ranges are legal to ignore: the whole body is served instead.
        if match and (match.group(1) or match.group(2)):
            first, last = match.group(1), match.group(2)
            if first:
                start = int(first)
                end = min(int(last), size - 1) if last else size - 1
            else:  # suffix range: the last N bytes
                start = max(size - int(last), 0)
            if start >= size or start > end:
                raise Problem(
                    416,
                    f"the range {range_header!r} is outside the {size}-byte object",
                    type="range-not-satisfiable",
                    headers={"Content-Range": f"bytes */{size}"},
                )
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    headers["Content-Length"] = str(end - start + 1 if size else 0)
    body = storage.iter_range(key, start, end) if size else iter(())
    return StreamingResponse(body, status_code=status, headers=headers, media_type=content_type)
