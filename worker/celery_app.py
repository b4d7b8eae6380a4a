"""The worker's Celery app: the shared configuration plus the task that runs a job.

Start it with `celery -A worker.celery_app worker -Q cpu` (or `-Q gpu` on GPU machines).
Jobs run in a confined job process (worker.sandbox); a worker that cannot confine them
refuses to start, unless MODELPRESS_UNSAFE_UNCONFINED_JOBS allows unconfined jobs. A worker
pins itself to MODELPRESS_CPUS, takes the `gpu` queue only once its GPU proved itself
(worker.gpu_check), and reports itself in the `workers` table (worker.presence).
"""

from __future__ import annotations

import gc
import logging
import os
import sys
from typing import Any, NoReturn

from celery.signals import (
    celeryd_init,
    setup_logging,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
)
from prometheus_client import start_http_server

from core.db import reset_engines
from core.logs import configure_logging
from core.metrics import prepare_metrics_dir, process_ended, process_registry
from core.queue import RUN_JOB_TASK, make_celery
from core.sandbox import probe
from core.settings import get_settings
from core.storage import get_storage
from worker.affinity import CoresUnavailable, pin_to
from worker.gpu_check import choose_queues
from worker.maintenance import start_maintenance
from worker.presence import Presence
from worker.reaper import start_reaper
from worker.runner import execute_job
from worker.sandbox import SandboxUnavailable, job_host

log = logging.getLogger("modelpress.worker")

#: The exit status of a worker that refuses to start (sysexits' EX_CONFIG): it cannot confine
#: jobs, or MODELPRESS_CPUS names cores it may not use.
EXIT_CANNOT_CONFINE = 78
EXIT_BAD_CONFIG = 78
#: The exit status of a worker started only for the `gpu` queue whose GPU check failed
#: (sysexits' EX_UNAVAILABLE).
EXIT_NO_GPU = 69

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


_presence: list[Presence] = []


def _refuse_to_start(message: str, status: int) -> NoReturn:
    log.critical(message)
    print(f"modelpress worker: {message}", file=sys.stderr, flush=True)
    sys.exit(status)


@celeryd_init.connect
def _log_from_the_start(instance: Any, options: dict[str, Any], **_: Any) -> None:
    # Before Celery's own start-up checks log their warnings.
    configure_logging(settings, level=options.get("loglevel") or None)
    if settings.resolved_log_format == "json":
        instance.quiet = True  # the start-up banner is plain text among the JSON lines


@setup_logging.connect
def _configure_logging(loglevel: int | str | None = None, **_: Any) -> None:
    # Connected, Celery leaves logging to this: MODELPRESS_LOG_FORMAT, at `--loglevel`.
    configure_logging(settings, level=loglevel or None)


@worker_init.connect
def _prepare_metrics(**_: Any) -> None:
    # Before the pool forks: its processes inherit the folder (PROMETHEUS_MULTIPROC_DIR).
    prepare_metrics_dir(settings)


@worker_process_shutdown.connect
def _pool_process_ended(pid: int | None = None, **_: Any) -> None:
    process_ended(pid or os.getpid())


@worker_init.connect
def _start_worker(sender: Any, **_: Any) -> None:
    # First: the pool, the job host and every job inherit the affinity set here.
    try:
        cores = pin_to(settings.cpu_set)
    except CoresUnavailable as exc:
        _refuse_to_start(str(exc), EXIT_BAD_CONFIG)
    _refuse_without_sandbox()
    queues = sender.app.amqp.queues
    choice = choose_queues(list(queues.consume_from), timeout_s=settings.gpu_check_timeout_s)
    for queue, reason in choice.refused.items():
        if not choice.queues:
            _refuse_to_start(
                f"this worker was started only for the {queue!r} queue and refuses it: its GPU "
                f"check failed: {reason}",
                EXIT_NO_GPU,
            )
        queues.deselect(queue)
    # Before the pool forks, so that its processes know the worker's id.
    presence = Presence.create(
        name=sender.hostname,
        queues=choice.queues,
        refused=choice.refused,
        cores=cores,
        device=choice.device,
        interval_s=settings.heartbeat_interval_s,
    )
    _presence.append(presence)


def _report_start(presence: Presence) -> None:
    # Logged once the worker's logging is set up (worker_init comes before it).
    worker = presence.registration
    for queue, reason in worker.refused.items():
        # A warning, not an error: the worker runs, for its other queues (`make run` on a
        # machine without a GPU starts one for `cpu,gpu`); a worker left with no queue at all
        # does not start (_refuse_to_start).
        log.warning(
            "this worker refuses the %r queue (its GPU check failed: %s) and serves %s",
            queue,
            reason,
            ", ".join(repr(q) for q in worker.queues),
        )
    log.info(
        "worker %s serves %s on cores %s (%s)",
        worker.id,
        ", ".join(worker.queues),
        ",".join(str(core) for core in worker.cores),
        worker.device.get("name") or worker.device.get("kind"),
    )


def _refuse_without_sandbox() -> None:
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
        _refuse_to_start(message, EXIT_CANNOT_CONFINE)


@worker_process_init.connect
def _fresh_engine_after_fork(**_: Any) -> None:
    # Connections must not be shared across fork; each pool process opens its own.
    reset_engines(after_fork=True)
    # The job host imports torch: started now, so that the first job finds it ready.
    try:
        job_host(settings)
    except SandboxUnavailable:
        log.exception("the job sandbox could not start")


@worker_ready.connect
def _start_reaper(**_: Any) -> None:
    for presence in _presence:
        _report_start(presence)
        presence.beat_forever()
    start_reaper(settings)
    log.info("reaper started (heartbeat timeout %.0f s)", settings.heartbeat_timeout_s)


@worker_shutdown.connect
def _stopped(**_: Any) -> None:
    for presence in _presence:
        try:
            presence.stop()
        except Exception:
            log.warning("could not mark this worker stopped; it is listed as dead", exc_info=True)


@worker_ready.connect
def _serve_metrics(**_: Any) -> None:
    if settings.worker_metrics_port is None:
        return
    # What this machine's processes observed (job durations, queue waits, heartbeats), for a
    # Prometheus that scrapes each worker machine; the database's numbers come from the API.
    start_http_server(
        settings.worker_metrics_port,
        addr=settings.worker_metrics_host,
        registry=process_registry(settings),
    )
    log.info(
        "metrics served on http://%s:%d/metrics",
        settings.worker_metrics_host,
        settings.worker_metrics_port,
    )


@worker_ready.connect
def _start_maintenance(**_: Any) -> None:
    start_maintenance(settings)
    log.info(
        "maintenance started (every %.0f s; retention %s)",
        settings.maintenance_interval_s,
        f"{settings.retention_days:g} days" if settings.retention_days else "off",
    )
