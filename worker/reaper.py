"""Keeps the database's job states honest: jobs whose worker died (no heartbeat) are
re-queued or failed, and queued jobs that the broker may have lost are sent again, when some
live worker serves their queue (a job that waits for one is left alone)."""

from __future__ import annotations

import logging
import threading

from core import autosearch, jobstate, workers
from core.db import session_scope
from core.queue import send_jobs
from core.settings import Settings
from core.storage import get_storage

log = logging.getLogger(__name__)


def reap_once(settings: Settings) -> list[str]:
    """Returns the ids of the jobs it handed to the broker."""
    with session_scope() as session:
        requeue = jobstate.reap_stale(session, timeout_s=settings.heartbeat_timeout_s)
    for job_id, _ in requeue:
        log.warning("job %s lost its worker; queued again", job_id)
    with session_scope() as session:
        served = workers.live_queues(session, timeout_s=settings.heartbeat_timeout_s)
        resend = jobstate.resend_stale_queued(
            session, after_s=settings.requeue_after_s, queues=served
        )
        workers.prune(session, history_s=settings.worker_history_s)
    for job_id, _ in resend:
        log.warning("job %s is queued and not (or no longer) in the broker; sent", job_id)
    # Sent after the commits, like every enqueue; what the broker does not take now is
    # marked unsent and sent again on the next pass.
    jobs = [*requeue, *resend]
    unsent = send_jobs(jobs)
    if unsent:
        with session_scope() as session:
            jobstate.mark_unsent(session, unsent)
    return [job_id for job_id, _ in jobs if job_id not in unsent]


def start_reaper(settings: Settings) -> threading.Event:
    """Runs in the worker's main process; every worker runs one, updates are conditional."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(settings.reaper_interval_s):
            try:
                reap_once(settings)
            except Exception:
                log.warning("reaper pass failed", exc_info=True)
            try:
                # Resumes searches after a crash and ends those whose minutes ran out.
                autosearch.advance_active(settings=settings, storage=get_storage())
            except Exception:
                log.warning("search pass failed", exc_info=True)

    threading.Thread(target=loop, name="modelpress-reaper", daemon=True).start()
    return stop
