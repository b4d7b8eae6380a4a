"""Keyset pagination over (created_at, id), newest first, with an opaque page token."""

from __future__ import annotations

import base64
import json
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, or_
from sqlalchemy.orm import Session

from api.errors import Problem

MAX_PAGE_SIZE = 200


def encode_token(created_at: datetime, row_id: str) -> str:
    raw = json.dumps({"c": created_at.isoformat(), "i": row_id}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str) -> tuple[datetime, str]:
    try:
        padded = token + "=" * (-len(token) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded))
        return datetime.fromisoformat(data["c"]), str(data["i"])
    except Exception:
        raise Problem(
            422, "page_token is not a token this API returned", type="invalid-page-token"
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
            422, f"page_size must be between 1 and {MAX_PAGE_SIZE}", type="invalid-page-size"
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
