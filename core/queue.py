"""The Celery app as the API sees it: configuration and enqueueing, no task code.

Only a job id travels through the broker; the worker re-reads the job from the database.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import lru_cache

from celery import Celery
from kombu import Queue

from core import embedded_broker  # noqa: F401  (registers the embedded transport)
from core.settings import Settings, get_settings

log = logging.getLogger(__name__)

RUN_JOB_TASK = "modelpress.run_job"
QUEUES = ("cpu", "gpu")


def make_celery(settings: Settings) -> Celery:
    app = Celery("modelpress", broker=settings.resolved_broker_url)
    transport_options: dict[str, object] = {}
    if not settings.uses_embedded_broker:
        # Above the hard time limit, so Redis never hands a long job to a second worker.
        transport_options["visibility_timeout"] = settings.task_time_limit_s + 600
        # A broker host that drops packets would otherwise hold a request for the OS's TCP
        # connect timeout (minutes) before the jobs are left to the reaper (send_jobs).
        transport_options["socket_connect_timeout"] = 3
    app.conf.update(
        task_queues=[Queue(name) for name in QUEUES],
        task_default_queue="cpu",
        task_acks_late=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_time_limit=settings.task_time_limit_s,
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    return app


@lru_cache
def get_celery() -> Celery:
    return make_celery(get_settings())


def enqueue_job(job_id: str, queue: str) -> None:
    """Call only after the commit that made the job visible."""
    get_celery().send_task(RUN_JOB_TASK, args=[job_id], queue=queue)


def send_jobs(jobs: Sequence[tuple[str, str]]) -> list[str]:
    """Sends (job_id, queue) pairs in order and returns the ids it could not send.

    Stops at the first failure: when the broker is down every send would wait as long as the
    first, and a request sending a batch would wait that long once per job. The jobs not sent
    stay queued in the database; the reaper sends them once the broker is back.
    """
    for index, (job_id, queue) in enumerate(jobs):
        try:
            enqueue_job(job_id, queue)
        except Exception:
            unsent = [unsent_id for unsent_id, _ in jobs[index:]]
            log.warning(
                "the broker is unreachable; %d job(s) stay queued until it is back: %s",
                len(unsent),
                ", ".join(unsent),
                exc_info=True,
            )
            return unsent
    return []


def ping_broker() -> None:
    with get_celery().connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=2)
