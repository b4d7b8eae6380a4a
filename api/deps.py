"""Dependencies every route uses: the database session and the caller's key."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Collection, Iterator
from typing import Annotated, TypeVar

import anyio.to_thread
from fastapi import Depends, Header, Request
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from api.errors import Problem
from api.middleware import STATE_KEY
from core import workers
from core.db import read_session_factory, session_factory
from core.settings import Settings, get_settings
from core.storage import Storage, get_storage
from core.tables import ApiKey

log = logging.getLogger(__name__)
T = TypeVar("T")


def get_session() -> Iterator[Session]:
    """Commits when the request succeeds, rolls back when it raises; services only flush.

    A commit that fails becomes the answer (409 for a conflict, else 503): the caller is
    never told that a change happened when the database did not keep it.
    """
    session = session_factory()()
    try:
        yield session
        try:
            session.commit()
        except IntegrityError as exc:
            log.warning("commit refused by a constraint: %s", exc.orig)
            raise Problem(
                409,
                "the change conflicts with the current state (another request changed the "
                "same thing at the same moment); nothing was changed, read it again and retry",
                type="conflict",
            ) from exc
        except SQLAlchemyError as exc:
            log.exception("commit failed")
            raise Problem(
                503,
                "the database did not confirm the change, so it may not have been saved; "
                "read the resource again before retrying",
                type="database_unavailable",
                headers={"Retry-After": "1"},
            ) from exc
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


async def in_read_session(work: Callable[[Session], T]) -> T:
    """Runs `work` with a session that only reads (no transaction, so nothing to commit:
    core.db.read_session_factory), in one trip to a worker thread.

    For the routes clients poll. A sync route with a session dependency makes three trips
    through the thread pool (the dependency's start, the route, the dependency's end), and
    under load each hand-off between threads costs more CPU than the query it carries
    (docs/performance.md, "Throughput"). The connection is back in the pool before the
    answer is serialized."""

    def read() -> T:
        with read_session_factory()() as session:
            return work(session)

    return await anyio.to_thread.run_sync(read)


# scope="function": the commit runs when the route returns and before the answer is sent
# (FastAPI runs a request-scoped dependency's exit after the response is on the wire), so a
# failed commit can still turn the answer into an error.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
SettingsDep = Annotated[Settings, Depends(get_settings)]
StorageDep = Annotated[Storage, Depends(get_storage)]
IdempotencyKey = Annotated[
    str | None,
    Header(
        max_length=255,
        description="A retry with the same key returns the same resource instead of a new one; "
        "the same key with a different body is a 422.",
    ),
]


async def current_key(request: Request) -> ApiKey:
    """The key `api.middleware.RequestGuard` authenticated before the body was read: no
    database session, so a route holds none unless it asks for one (a stream waits without)."""
    key: ApiKey | None = request.scope.get("state", {}).get(STATE_KEY)
    if key is None:  # only routes outside /v1 are public, and they take no key
        raise Problem(401, "this route needs an API key", type="unauthorized")
    return key


CurrentKey = Annotated[ApiKey, Depends(current_key)]


def held_scopes(key: ApiKey) -> set[str]:
    """What a key may do: `instance` implies `admin`, and `admin` implies `read` and `write`."""
    held = set(key.scopes)
    if "instance" in held:
        held.add("admin")
    if "admin" in held:
        held |= {"read", "write"}
    return held


def _check_scope(key: ApiKey, scope: str) -> ApiKey:
    if scope not in held_scopes(key):
        raise Problem(403, f"this API key lacks the {scope!r} scope", type="forbidden")
    return key


# One named function per scope, so a route's scope can be read from its dependencies
# (tests walk every route and check what each scope may do). Async: they only look at the key,
# and a sync dependency would cost a trip through the thread pool on every request.
async def require_read(key: CurrentKey) -> ApiKey:
    return _check_scope(key, "read")


async def require_write(key: CurrentKey) -> ApiKey:
    return _check_scope(key, "write")


async def require_admin(key: CurrentKey) -> ApiKey:
    return _check_scope(key, "admin")


async def require_instance(key: CurrentKey) -> ApiKey:
    return _check_scope(key, "instance")


#: Every resource route takes one of these; the key's `project_id` is the only project
#: whose rows the route may read or change.
ReadKey = Annotated[ApiKey, Depends(require_read)]
WriteKey = Annotated[ApiKey, Depends(require_write)]
#: Manages the keys of the key's own project only.
AdminKey = Annotated[ApiKey, Depends(require_admin)]
#: Manages projects, and the keys of every project (the first-start key holds it).
InstanceKey = Annotated[ApiKey, Depends(require_instance)]


class LiveQueues(Collection[str]):
    """The queues some live worker serves, read from the database the first time they are
    asked for: an answer shows `waiting_for` only for a queued job, so an answer without one
    (a running or finished job, most status reads) makes no query for them. Use it while its
    session is open, within the request that made it."""

    def __init__(self, session: Session) -> None:
        self._session = session

    @functools.cached_property
    def _queues(self) -> frozenset[str]:
        return workers.live_queues(self._session, timeout_s=get_settings().heartbeat_timeout_s)

    def __contains__(self, queue: object) -> bool:
        return queue in self._queues

    def __iter__(self) -> Iterator[str]:
        return iter(self._queues)

    def __len__(self) -> int:
        return len(self._queues)


def live_queues(session: Session) -> LiveQueues:
    """The queues some live worker serves: a queued job of another queue shows `waiting_for`.
    Read for every answer that shows a queued job (one small query) rather than stored with
    the job: no process is there to keep a stored value true while no worker runs at all."""
    return LiveQueues(session)
