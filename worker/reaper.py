"""Keeps the database's job states honest: jobs whose worker died (no heartbeat) are
re-queued or failed, and queued jobs that the broker may have lost are sent again."""

from __future__ import annotations

import logging
import threading

from core import jobstate
from core.db import session_scope
from core.queue import enqueue_job
from core.settings import Settings

log = logging.getLogger(__name__)


def reap_once(settings: Settings) -> list[str]:
    """Returns the ids of the jobs it sent to the broker."""
    with session_scope() as session:
        requeue = jobstate.reap_stale(session, timeout_s=settings.heartbeat_timeout_s)
    # Sent after the commit, like every enqueue.
    for job_id, queue in requeue:
        log.warning("job %s lost its worker; queued again", job_id)
        enqueue_job(job_id, queue)
    with session_scope() as session:
        resend = jobstate.resend_stale_queued(session, after_s=settings.requeue_after_s)
    for job_id, queue in resend:
        log.warning(
            "job %s still queued %.0f s after it was sent; sent again",
            job_id,
            settings.requeue_after_s,
        )
        enqueue_job(job_id, queue)
    return [job_id for job_id, _ in [*requeue, *resend]]


def start_reaper(settings: Settings) -> threading.Event:
    """Runs in the worker's main process; every worker runs one, updates are conditional."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(settings.reaper_interval_s):
            try:
                reap_once(settings)
            except Exception:
                log.warning("reaper pass failed", exc_info=True)

    threading.Thread(target=loop, name="modelpress-reaper", daemon=True).start()
    return stop
