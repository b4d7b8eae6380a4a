"""One maintenance pass: retention (when MODELPRESS_RETENTION_DAYS is set), then the sweep of
orphans. Every worker runs it periodically (worker.maintenance); operators run it with
`python -m core sweep`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from core.db import utcnow
from core.retention import ExpiredJob, expire_artifacts
from core.settings import Settings
from core.storage import Storage
from core.sweeper import SweepReport, sweep


@dataclass
class MaintenanceReport:
    expired: list[ExpiredJob]
    swept: SweepReport

    def lines(self, *, dry_run: bool = False) -> list[str]:
        """What was removed, one line each, as `python -m core sweep` prints it."""
        verb = "would remove" if dry_run else "removed"
        out = [
            f"{verb} the {job.artifacts} artifact(s) of job {job.job_id} (retention)"
            for job in self.expired
        ]
        out += [f"{verb} orphan object {key}" for key in self.swept.objects]
        out += [f"{verb} orphan folder {folder}" for folder in self.swept.folders]
        return out


def run_maintenance(
    *, settings: Settings, storage: Storage, now: datetime | None = None, dry_run: bool = False
) -> MaintenanceReport:
    now = now or utcnow()
    expired: list[ExpiredJob] = []
    if settings.retention_days is not None:
        expired = expire_artifacts(
            storage=storage,
            keep_for=timedelta(days=settings.retention_days),
            now=now,
            dry_run=dry_run,
        )
    swept = sweep(storage=storage, settings=settings, now=now, dry_run=dry_run)
    return MaintenanceReport(expired=expired, swept=swept)
