"""The worker's Celery app: the shared configuration plus the task that runs a job.

Start it with `celery -A worker.celery_app worker -Q cpu` (or `-Q gpu` on GPU machines).
"""

from __future__ import annotations

import gc
import logging
from typing import Any

from celery.signals import worker_process_init, worker_ready

from core.db import reset_engines
from core.queue import RUN_JOB_TASK, make_celery
from core.settings import get_settings
from core.storage import get_storage
from optimizers.pipeline import preload
from worker.reaper import start_reaper
from worker.runner import execute_job

log = logging.getLogger("modelpress.worker")

settings = get_settings()
app = make_celery(settings)
preload()
# Everything imported so far lives as long as the worker: keeping it out of the garbage
# collector's scans avoids multi-second pauses (the benchmark collects before measuring
# memory) and keeps forked pool processes sharing those pages.
gc.freeze()
# One job at a time per worker process: benchmarks need the machine to themselves.
app.conf.worker_concurrency = 1


@app.task(name=RUN_JOB_TASK, acks_late=True, ignore_result=True)
def run_job(job_id: str) -> str | None:
    return execute_job(job_id, settings=settings, storage=get_storage())


@worker_process_init.connect
def _fresh_engine_after_fork(**_: Any) -> None:
    # Connections must not be shared across fork; each pool process opens its own.
    reset_engines()


@worker_ready.connect
def _start_reaper(**_: Any) -> None:
    start_reaper(settings)
    log.info("reaper started (heartbeat timeout %.0f s)", settings.heartbeat_timeout_s)
