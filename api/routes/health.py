"""Liveness and readiness: is the process up, can it reach its database, broker, storage,
and can jobs be confined on this machine."""

from __future__ import annotations

from collections.abc import Callable

import anyio
import anyio.to_thread
from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from core.db import session_factory
from core.queue import ping_broker
from core.sandbox import probe as probe_sandbox
from core.settings import get_settings
from core.storage import get_storage

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


def _check_database() -> None:
    with session_factory()() as session:
        session.execute(text("SELECT 1"))


#: The sandbox check's value when the settings allow unconfined jobs: ready, and says so.
UNCONFINED = "off: MODELPRESS_UNSAFE_UNCONFINED_JOBS=true, jobs run unconfined"
#: Its value on an API host that runs no jobs: ready, and says why it was not checked.
NOT_HERE = "not checked: MODELPRESS_READYZ_SANDBOX=false, no jobs run on this host"


def _check_sandbox() -> None:
    reason = probe_sandbox(get_settings())
    if reason is not None:
        raise RuntimeError(reason)


#: A check that has not answered by then reports its dependency down: a load balancer asks
#: again soon, and a dependency that drops packets must not hold the answer for minutes.
PROBE_TIMEOUT_S = 5.0


async def _probe(check: Callable[[], object]) -> str:
    with anyio.move_on_after(PROBE_TIMEOUT_S):
        try:
            # Abandoned at the timeout: its thread ends when the client library gives up.
            await anyio.to_thread.run_sync(check, abandon_on_cancel=True)
        except Exception as exc:
            return f"error: {type(exc).__name__}: {exc}"[:300]
        return "ok"
    return f"error: no answer within {PROBE_TIMEOUT_S:g} s"


@router.get("/readyz")
async def readyz() -> JSONResponse:
    """Every dependency by name with its state; 503 when one is down, `failing` names it."""
    checks: dict[str, str] = {}
    probes: dict[str, Callable[[], object]] = {
        "database": _check_database,
        "broker": ping_broker,
        "storage": lambda: get_storage().ping(),
    }
    if get_settings().readyz_sandbox:
        probes["sandbox"] = _check_sandbox
    else:
        checks["sandbox"] = NOT_HERE

    async def run(name: str) -> None:
        checks[name] = await _probe(probes[name])

    # At once, so the answer takes as long as the slowest check, not their sum.
    async with anyio.create_task_group() as group:
        for name in probes:
            group.start_soon(run, name)
    if checks["sandbox"] == "ok" and get_settings().unsafe_unconfined_jobs:
        checks["sandbox"] = UNCONFINED
    checks = {name: checks[name] for name in ("database", "broker", "storage", "sandbox")}
    failing = [name for name, state in checks.items() if state not in ("ok", UNCONFINED, NOT_HERE)]
    return JSONResponse(
        {"status": "not ready" if failing else "ready", "checks": checks, "failing": failing},
        status_code=503 if failing else 200,
    )
