"""Engine, sessions and the declarative base shared by every table."""

from __future__ import annotations

import select
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import DateTime, Engine, MetaData, TypeDecorator, create_engine, event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(TypeDecorator[datetime]):
    """Stored as naive UTC (SQLite has no time zones), always returned as aware UTC."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            # WAL lets the API read while the worker writes; foreign keys are off by default.
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    engine = create_engine(url)
    _ping_when_stale(engine)
    return engine


#: A pooled connection unused for longer than this is pinged before its next use.
PING_AFTER_IDLE_S = 30.0


def _ping_when_stale(engine: Engine) -> None:
    """Checks a pooled connection before it is used, as `pool_pre_ping` does, but only when it
    may have gone stale: its socket holds something the server sent while it sat in the pool
    (a server that shuts down or ends a session says so, and closes it), or it sat there
    longer than PING_AFTER_IDLE_S. A failed check makes the pool connect anew
    (DisconnectionError), so a restarted server costs no request an error.

    By hand because `pool_pre_ping` pings on every checkout: a round trip to the server that
    was two of the four of a status read and one in two of a worker's small writes, on the
    same cores as the jobs (docs/performance.md, "Throughput"). A socket poll costs no trip.
    """

    @event.listens_for(engine, "checkin")
    def _checked_in(dbapi_connection: Any, record: Any) -> None:
        record.info["checked_in_at"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        since = record.info.pop("checked_in_at", None)
        if since is None:
            return  # a new connection
        if time.monotonic() - since < PING_AFTER_IDLE_S and not _server_spoke(dbapi_connection):
            return
        try:
            alive = engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:
            raise DisconnectionError(f"a pooled connection failed its check: {exc}") from exc
        if not alive:
            raise DisconnectionError("a pooled connection failed its check")


def _server_spoke(dbapi_connection: Any) -> bool:
    """Whether the server sent anything (or closed) since the connection was last used: an
    idle connection in the pool expects nothing."""
    try:
        fd = dbapi_connection.fileno()
    except Exception:
        return True  # closed on this side: the check fails and the pool reconnects
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLPRI)
    return bool(poller.poll(0))


#: Every engine the cached factories made, so that forgetting them also lets go of their
#: connections (a test run makes one per test database; unclosed, their files stay open).
_ENGINES: list[Engine] = []


@lru_cache
def _session_factory(url: str) -> sessionmaker[Session]:
    engine = make_engine(url)
    _ENGINES.append(engine)
    return sessionmaker(engine, expire_on_commit=False)


@lru_cache
def _read_session_factory(url: str) -> sessionmaker[Session]:
    ordinary = _session_factory(url)
    engine = ordinary.kw["bind"]
    if engine.dialect.name == "sqlite":
        # Python's sqlite3 begins a transaction only before a write: a read already runs
        # without one, and switching the connection's mode would cost a PRAGMA per checkin.
        return ordinary
    return sessionmaker(
        engine.execution_options(isolation_level="AUTOCOMMIT"), expire_on_commit=False
    )


def reset_engines(*, after_fork: bool = False) -> None:
    """Forget cached engines (after fork, or when settings change in tests), closing their
    pooled connections; after a fork they are the parent's, so they are dropped unclosed."""
    _read_session_factory.cache_clear()
    _session_factory.cache_clear()
    while _ENGINES:
        _ENGINES.pop().dispose(close=not after_fork)


def close_pooled_connections() -> None:
    """Closes the default engine's pooled connections: done before a fork, so that no child
    inherits (and, when it lets go of it, closes) a connection the parent still uses."""
    engine = session_factory().kw.get("bind")
    if isinstance(engine, Engine):
        engine.dispose()


def session_factory(url: str | None = None) -> sessionmaker[Session]:
    if url is None:
        from core.settings import get_settings

        url = get_settings().resolved_database_url
    return _session_factory(url)


def read_session_factory(url: str | None = None) -> sessionmaker[Session]:
    """Sessions that only read, each statement on its own (no transaction): a status read
    or an API key lookup is one or two independent SELECTs, and a transaction around them
    would cost a BEGIN and a COMMIT or ROLLBACK round trip each on PostgreSQL. Same engine
    and pool as `session_factory`; a connection is put back as it was. Never write with one."""
    if url is None:
        from core.settings import get_settings

        url = get_settings().resolved_database_url
    return _read_session_factory(url)


@contextmanager
def session_scope(url: str | None = None) -> Iterator[Session]:
    """A session that commits on success and rolls back on error (worker and scripts)."""
    session = session_factory(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
