"""Liveness and readiness: is the process up, can it reach its database, broker, storage,
and can jobs be confined on this machine."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
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


@router.get("/readyz")
async def readyz() -> JSONResponse:
    checks: dict[str, str] = {}
    probes: list[tuple[str, Callable[[], object]]] = [
        ("database", _check_database),
        ("broker", ping_broker),
        ("storage", lambda: get_storage().ping()),
    ]
    if get_settings().readyz_sandbox:
        probes.append(("sandbox", _check_sandbox))
    else:
        checks["sandbox"] = NOT_HERE
    for name, probe in probes:
        try:
            await run_in_threadpool(probe)
            checks[name] = "ok"
        except Exception as exc:
            checks[name] = f"error: {type(exc).__name__}: {exc}"[:300]
    if checks["sandbox"] == "ok" and get_settings().unsafe_unconfined_jobs:
        checks["sandbox"] = UNCONFINED
    ready = all(v in ("ok", UNCONFINED, NOT_HERE) for v in checks.values())
    return JSONResponse(
        {"status": "ready" if ready else "not ready", "checks": checks},
        status_code=200 if ready else 503,
    )
