"""A job's heartbeat: proves the worker is alive and notices a cancel request."""

from __future__ import annotations

import logging
import threading

from core import jobstate
from core.db import session_scope
from core.models import JobStatus

log = logging.getLogger(__name__)


class JobCanceled(Exception):
    """Raised inside the pipeline (through the progress callback) to stop a canceled job."""


class JobMonitor:
    def __init__(self, job_id: str, attempt: int, *, interval_s: float) -> None:
        self.job_id = job_id
        self.attempt = attempt
        self.interval_s = interval_s
        self.cancel_requested = threading.Event()
        #: Set when this attempt no longer owns the job (it was reaped and re-queued).
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{job_id}", daemon=True)

    def __enter__(self) -> JobMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval_s * 2)

    def should_stop(self) -> bool:
        return self.cancel_requested.is_set() or self.lost.is_set()

    def beat(self) -> None:
        with session_scope() as session:
            status = jobstate.heartbeat(session, self.job_id, self.attempt)
        if status is None:
            self.lost.set()
        elif status == JobStatus.cancelling:
            self.cancel_requested.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.beat()
            except Exception:  # a database hiccup must not kill the job; the next beat retries
                log.warning("heartbeat for job %s failed", self.job_id, exc_info=True)
