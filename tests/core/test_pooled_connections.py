"""Pooled PostgreSQL connections: reused without a round trip while healthy, and replaced
without an error when the server ended them while they sat in the pool."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, text

from core import db
from core.db import make_engine


@pytest.fixture
def engine(postgres_server: str) -> Iterator[Engine]:
    engine = make_engine(postgres_server)
    yield engine
    engine.dispose()


def _backend_pid(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


def _count_pings(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    pings: list[int] = []
    ping = engine.dialect.do_ping

    def counted(dbapi_connection: object) -> bool:
        pings.append(1)
        return ping(dbapi_connection)

    monkeypatch.setattr(engine.dialect, "do_ping", counted)
    return pings


def test_a_healthy_pooled_connection_is_reused_without_a_ping(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    pings = _count_pings(engine, monkeypatch)
    first = _backend_pid(engine)
    assert [_backend_pid(engine) for _ in range(5)] == [first] * 5
    assert pings == []


def test_a_session_the_server_ended_is_replaced_without_an_error(
    engine: Engine, postgres_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    pings = _count_pings(engine, monkeypatch)
    pooled = _backend_pid(engine)
    # What a server restart or an idle-session timeout does to a connection in the pool.
    other = make_engine(postgres_server)
    with other.connect() as conn:
        assert conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pooled}).scalar()
    other.dispose()

    replaced = _backend_pid(engine)  # no OperationalError: the check found it dead
    assert replaced != pooled
    assert pings == [1]


def test_a_connection_idle_past_the_limit_is_pinged(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    pings = _count_pings(engine, monkeypatch)
    pooled = _backend_pid(engine)
    monkeypatch.setattr(db, "PING_AFTER_IDLE_S", 0.0)  # as if it sat there longer
    assert _backend_pid(engine) == pooled  # alive: checked, and kept
    assert pings == [1]
