"""The worker's periodic maintenance (core.maintenance): retention and the sweep of orphans,
in a thread of the worker's main process, like the reaper."""

from __future__ import annotations

import logging
import threading

from core.maintenance import run_maintenance
from core.settings import Settings
from core.storage import get_storage

log = logging.getLogger(__name__)


def start_maintenance(settings: Settings) -> threading.Event:
    """Every worker runs it; what one pass removes, another finds already gone."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(settings.maintenance_interval_s):
            try:
                report = run_maintenance(settings=settings, storage=get_storage())
            except Exception:
                log.warning("maintenance pass failed", exc_info=True)
                continue
            for line in report.lines():
                log.info("maintenance: %s", line)

    threading.Thread(target=loop, name="modelpress-maintenance", daemon=True).start()
    return stop
