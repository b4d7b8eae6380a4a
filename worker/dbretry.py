"""The pool process's database writes outlast a short database outage (a restart, a
failover): each transaction is retried with backoff, and given up only after the heartbeat
timeout, when the reaper of another worker may take the job over anyway."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session

from core.db import session_scope

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Errors of a database that is away (refused, dropped, locked), not of the statement.
UNREACHABLE = (OperationalError, InterfaceError)
_FIRST_DELAY_S, _MAX_DELAY_S = 0.2, 5.0


def retrying(work: Callable[[Session], T], *, patience_s: float, what: str) -> T:
    """work(session) in a transaction, run again from the start while the database is
    unreachable, for up to `patience_s`; then the last error is raised."""
    delay = _FIRST_DELAY_S
    deadline = time.monotonic() + patience_s
    while True:
        try:
            with session_scope() as session:
                return work(session)
        except UNREACHABLE as exc:
            if time.monotonic() + delay > deadline:
                raise
            reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc)
            log.warning("%s: database unreachable (%s); again in %.1f s", what, reason, delay)
            time.sleep(delay)
            delay = min(delay * 2, _MAX_DELAY_S)
