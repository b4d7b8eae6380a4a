"""The FastAPI application: routers, error handlers, first-start bootstrap."""

from __future__ import annotations

import gc
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api.errors import install_error_handlers
from api.middleware import RequestGuard, streamed_uploads
from api.openapi import install_security_scheme, operation_id
from api.request_context import RequestContext, route_templates
from api.retry_after import RetryAfter
from api.routes import artifacts, batches, datasets, health, jobs, keys, metrics, models, workers
from api.uploads import sweep_stale_uploads
from core.bootstrap import ensure_admin_key
from core.db import session_factory
from core.metrics import prepare_metrics_dir
from core.settings import get_settings
from web.app import STREAMED_ROUTES as DASHBOARD_UPLOADS
from web.app import install as install_dashboard

log = logging.getLogger("modelpress.api")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings = get_settings()
    settings.tmp_dir.mkdir(parents=True, exist_ok=True)
    prepare_metrics_dir(settings)
    # Uploads cut short by a killed API process left their temp files here; other API
    # processes may be receiving uploads right now, and the sweep leaves those alone.
    removed = sweep_stale_uploads(settings.tmp_dir)
    if removed:
        log.info("removed %d temp file(s) of interrupted uploads", removed)
    with session_factory()() as session:
        generated = ensure_admin_key(session, settings.bootstrap_key)
    if generated:
        # Printed once, on the first start; only its hash is stored.
        print(
            f"modelpress: created the first admin API key (shown only now): {generated}",
            file=sys.stderr,
            flush=True,
        )
    # What the process holds after start-up (modules, the app, its schemas) lives as long as
    # the process: kept out of the collector's full scans, which otherwise walk it every few
    # requests that build many objects (a page of jobs) and stall that request by ~100 ms.
    gc.freeze()
    yield


def create_app() -> FastAPI:
    app = FastAPI(
        title="modelpress",
        version="0.1.0",
        description="Upload a model and a job spec; get back a smaller, faster model and "
        "the numbers that prove it. Authenticate with `Authorization: Bearer <key>`.",
        lifespan=lifespan,
        generate_unique_id_function=operation_id,
    )
    install_error_handlers(app)
    install_security_scheme(app)
    for router in (
        health.router,
        models.router,
        datasets.router,
        jobs.router,
        batches.router,
        artifacts.router,
        keys.router,
        workers.router,
        metrics.router,
    ):
        app.include_router(router)
    # The dashboard's pages, under / (the API stays under /v1).
    install_dashboard(app)
    app.add_middleware(
        RequestGuard,
        # The dashboard's upload forms stream like the API's; its routes are not in the schema.
        streamed_body_routes=[*streamed_uploads(app.openapi()), *DASHBOARD_UPLOADS],
    )
    app.add_middleware(RetryAfter)
    # Added last, so it is the outermost layer: it sees every answer, the refusals too.
    app.add_middleware(RequestContext, templates=route_templates(app))
    return app


app = create_app()
