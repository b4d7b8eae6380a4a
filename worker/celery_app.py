"""The worker's Celery app: the shared configuration plus the task that runs a job.

Start it with `celery -A worker.celery_app worker -Q cpu` (or `-Q gpu` on GPU machines).
Jobs run in a confined job process (worker.sandbox); a worker that cannot confine them
refuses to start, unless MODELPRESS_UNSAFE_UNCONFINED_JOBS allows unconfined jobs.
"""

from __future__ import annotations

import gc
import logging
import sys
from typing import Any

from celery.signals import worker_init, worker_process_init, worker_ready

from core.db import reset_engines
from core.queue import RUN_JOB_TASK, make_celery
from core.sandbox import probe
from core.settings import get_settings
from core.storage import get_storage
from worker.maintenance import start_maintenance
from worker.reaper import start_reaper
from worker.runner import execute_job
from worker.sandbox import SandboxUnavailable, job_host

log = logging.getLogger("modelpress.worker")

#: The exit status of a worker that refuses to start (sysexits' EX_CONFIG).
EXIT_CANNOT_CONFINE = 78

settings = get_settings()
app = make_celery(settings)
# Everything imported so far lives as long as the worker: keeping it out of the garbage
# collector's scans keeps forked pool processes sharing those pages.
gc.freeze()
# One job at a time per worker process: benchmarks need the machine to themselves.
app.conf.worker_concurrency = 1


@app.task(name=RUN_JOB_TASK, acks_late=True, ignore_result=True)
def run_job(job_id: str) -> str | None:
    return execute_job(job_id, settings=settings, storage=get_storage())


@worker_init.connect
def _refuse_without_sandbox(**_: Any) -> None:
    if settings.unsafe_unconfined_jobs:
        log.warning(
            "MODELPRESS_UNSAFE_UNCONFINED_JOBS is set: jobs run UNCONFINED, with this worker's "
            "files, network and credentials in reach of every uploaded model"
        )
        return
    reason = probe(settings, max_age_s=0)
    if reason is not None:
        message = (
            f"this worker cannot confine jobs and refuses to run them: {reason}. Install "
            "bubblewrap and allow user namespaces (docs/security.md), or, on a trusted "
            "single-user install only, set MODELPRESS_UNSAFE_UNCONFINED_JOBS=true"
        )
        log.critical(message)
        print(f"modelpress worker: {message}", file=sys.stderr, flush=True)
        sys.exit(EXIT_CANNOT_CONFINE)


@worker_process_init.connect
def _fresh_engine_after_fork(**_: Any) -> None:
    # Connections must not be shared across fork; each pool process opens its own.
    reset_engines()
    # The job host imports torch: started now, so that the first job finds it ready.
    try:
        job_host(settings)
    except SandboxUnavailable:
        log.exception("the job sandbox could not start")


@worker_ready.connect
def _start_reaper(**_: Any) -> None:
    start_reaper(settings)
    log.info("reaper started (heartbeat timeout %.0f s)", settings.heartbeat_timeout_s)


@worker_ready.connect
def _start_maintenance(**_: Any) -> None:
    start_maintenance(settings)
    log.info(
        "maintenance started (every %.0f s; retention %s)",
        settings.maintenance_interval_s,
        f"{settings.retention_days:g} days" if settings.retention_days else "off",
    )
