"""Keyset pagination over (created_at, id), newest first, with an opaque page token."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Query
from sqlalchemy import Select, and_, or_
from sqlalchemy.orm import Session

from api.errors import Problem

MAX_PAGE_SIZE = 200


def as_utc(value: datetime) -> datetime:
    """An aware time in UTC, as the database stores it; a time that has no UTC equivalent
    (year 1 or 9999 at the edge of a day) is a ValueError, so a 422 rather than a 500."""
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("the time is out of range once converted to UTC") from None


def encode_token(created_at: datetime, row_id: str) -> str:
    raw = json.dumps({"c": created_at.isoformat(), "i": row_id}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


#: Far longer than any token `encode_token` makes.
MAX_TOKEN_LENGTH = 512


def decode_token(token: str) -> tuple[datetime, str]:
    """The position a token names. It is not signed: it only says where to go on in a list
    that the caller's project limits anyway, so a forged one shows nothing new."""
    try:
        if len(token) > MAX_TOKEN_LENGTH:
            raise ValueError("too long")
        padded = token + "=" * (-len(token) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded))
        created_at, row_id = datetime.fromisoformat(data["c"]), data["i"]
        if created_at.tzinfo is None or not isinstance(row_id, str):
            raise ValueError("not a token of ours")
        return as_utc(created_at), row_id
    except Exception:
        raise Problem(
            422, "page_token is not a token this API returned", type="invalid_page_token"
        ) from None


def paginate(
    session: Session,
    query: Select[Any],
    table: Any,
    *,
    page_size: int,
    page_token: str | None,
) -> tuple[list[Any], str | None]:
    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise Problem(
            422, f"page_size must be between 1 and {MAX_PAGE_SIZE}", type="invalid_page_size"
        )
    if page_token:
        created_at, row_id = decode_token(page_token)
        query = query.where(
            or_(
                table.created_at < created_at,
                and_(table.created_at == created_at, table.id < row_id),
            )
        )
    query = query.order_by(table.created_at.desc(), table.id.desc()).limit(page_size + 1)
    rows = list(session.scalars(query).all())
    next_token = None
    if len(rows) > page_size:
        rows = rows[:page_size]
        last = rows[-1]
        next_token = encode_token(last.created_at, last.id)
    return rows, next_token


#: Lists of uploads filtered by content: a client asks whether the project already holds a file
#: before sending it again.
Sha256Filter = Annotated[
    str | None,
    Query(
        pattern="^[0-9a-fA-F]{64}$",
        description="Only uploads whose content has this sha256 (hex).",
    ),
]
