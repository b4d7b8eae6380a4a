"""The database server's clock, as SQL: what decides whether a job is stale, so that every
worker and API process judges by one clock, whatever its own says."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Float, literal
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from core.db import UTCDateTime


class db_utcnow(FunctionElement[datetime]):
    """The database's current time in UTC, stored as the UTCDateTime columns store theirs
    (naive UTC), optionally shifted by `offset_s` seconds (negative: in the past)."""

    type = UTCDateTime()
    inherit_cache = True
    name = "db_utcnow"

    def __init__(self, offset_s: float = 0.0) -> None:
        super().__init__(literal(float(offset_s), Float()))


def _offset(element: db_utcnow, compiler: Any, **kw: Any) -> str:
    return str(compiler.process(element.clauses, **kw))


@compiles(db_utcnow, "sqlite")
def _sqlite(element: db_utcnow, compiler: Any, **kw: Any) -> str:
    # SQLite's 'now' is UTC; '%f' keeps milliseconds. Text of this shape sorts, and so
    # compares, like the 'YYYY-MM-DD HH:MM:SS.ffffff' text SQLAlchemy writes for datetimes.
    offset = _offset(element, compiler, **kw)
    return f"strftime('%Y-%m-%d %H:%M:%f', 'now', ({offset}) || ' seconds')"


@compiles(db_utcnow, "postgresql")
def _postgresql(element: db_utcnow, compiler: Any, **kw: Any) -> str:
    # The columns are TIMESTAMP WITHOUT TIME ZONE holding UTC: converted explicitly, since a
    # bare now() would be stored in the session's time zone. statement_timestamp(), not now():
    # now() stays at the start of a long transaction.
    offset = _offset(element, compiler, **kw)
    return (
        "(timezone('UTC', statement_timestamp()) "
        f"+ make_interval(secs => CAST({offset} AS DOUBLE PRECISION)))"
    )
