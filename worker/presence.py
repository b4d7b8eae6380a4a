"""The worker's row in the `workers` table: written when the worker's main process starts,
refreshed by a heartbeat thread there, marked stopped on a clean shutdown.

The main process sets the worker's id before it forks the pool, so the pool processes
(which claim jobs) inherit it and record it on the jobs they claim."""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import os
import platform
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from core import workers
from core.db import close_pooled_connections, new_id, session_scope
from core.metrics import observe_heartbeat
from core.workers import Registration

log = logging.getLogger(__name__)

_worker_id: str | None = None


def current_worker_id() -> str | None:
    """This worker's row id (in the main process and the pool processes it forked)."""
    return _worker_id


_WORKER_DISTRIBUTIONS = ("modelpress", "onnxruntime", "onnxruntime-gpu", "torch")


def versions(names: tuple[str, ...] = _WORKER_DISTRIBUTIONS) -> dict[str, str]:
    """Installed versions (of those installed), read from package metadata: the main process
    imports neither onnxruntime nor torch. A copy: callers may add to it."""
    return dict(_versions(names))


@functools.cache
def _versions(names: tuple[str, ...]) -> dict[str, str]:
    # Read once per process: every job's provenance asks, and reading the metadata searches
    # the installed distributions each time. What this process runs cannot change under it.
    found = {"python": platform.python_version()}
    for name in names:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def cpu_model() -> str:
    """The CPU's model name: part of the hardware class a trial's cached result is tied to."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine() or "unknown"
    for line in text.splitlines():
        key, _, value = line.partition(":")
        # x86 names the CPU in "model name"; ARM in "Model" or "Hardware".
        if key.strip() in ("model name", "Model", "Hardware") and value.strip():
            return value.strip()
    return platform.processor() or platform.machine() or "unknown"


@dataclass
class Presence:
    registration: Registration
    interval_s: float
    _stop: threading.Event | None = None

    @classmethod
    def create(
        cls,
        *,
        name: str,
        queues: list[str],
        refused: dict[str, str],
        cores: list[int],
        device: dict[str, object],
        interval_s: float,
    ) -> Presence:
        """Registers the worker; its heartbeat starts with `beat_forever`. A database that is
        away now does not stop the worker: its first heartbeat registers it."""
        global _worker_id
        registration = Registration(
            id=new_id("wkr"),
            name=name,
            host=socket.gethostname(),
            pid=os.getpid(),
            queues=queues,
            refused=refused,
            cores=cores,
            device={**device, "cpu_model": cpu_model()},
            versions=versions(),
        )
        _worker_id = registration.id
        presence = cls(registration=registration, interval_s=interval_s)
        try:
            with session_scope() as session:
                workers.register(session, registration)
        except Exception:
            log.warning("worker not registered yet; its heartbeat tries again", exc_info=True)
        finally:
            close_pooled_connections()  # the pool processes are forked next
        return presence

    def beat_forever(self) -> None:
        self._stop = stop = threading.Event()

        def loop() -> None:
            while not stop.wait(self.interval_s):
                try:
                    self.beat()
                except Exception:
                    # The database is away: the next beat tries again; the API lists the
                    # worker as dead meanwhile, which is what it looks like from outside.
                    log.warning("worker heartbeat not written", exc_info=True)

        threading.Thread(target=loop, name="modelpress-worker-heartbeat", daemon=True).start()

    def beat(self) -> None:
        with session_scope() as session:
            if not workers.beat(session, self.registration.id):
                # Pruned while this worker was cut off from the database: it says who it is again.
                workers.register(session, self.registration)
        # The worker's own heartbeat, busy or idle (a job's heartbeats are counted apart, by
        # the pool process that runs it).
        observe_heartbeat(worker=self.registration.name, at=time.time())

    def stop(self) -> None:
        if self._stop is not None:
            self._stop.set()
        with session_scope() as session:
            workers.retire(session, self.registration.id)
