"""The sweeper: removes what no row points to any more. Stored objects under the models,
datasets and jobs folders (core.storage_keys) whose row is gone, or whose job's artifacts
expired; and a worker's scratch folders whose job (or job host process) is gone.

Deletions commit their rows before removing objects, so a crash in between leaves orphans;
this is what finds them. It never judges anything younger than the grace period
(MODELPRESS_ORPHAN_GRACE_S): an upload stores its object before its row commits
(api.uploads.keep_upload), and a job's attempt creates its folder as it starts.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.db import session_scope, utcnow
from core.settings import Settings
from core.storage import Storage, StorageError, StoredObject, check_key
from core.storage_keys import Owner, OwnerKind, owner_of
from core.tables import Dataset, Job, JobStatus, StoredModel

log = logging.getLogger(__name__)

#: Ids asked about per query.
_CHUNK = 500
#: A job whose staging folder is in use: its attempt is running, or stopping.
_RUNNING = (JobStatus.running, JobStatus.canceling)


@dataclass
class SweepReport:
    #: Storage keys removed (or that would be, in a dry run).
    objects: list[str] = field(default_factory=list)
    #: Scratch and staging folders removed.
    folders: list[Path] = field(default_factory=list)


def sweep(
    *,
    storage: Storage,
    settings: Settings,
    now: datetime | None = None,
    dry_run: bool = False,
) -> SweepReport:
    """Objects first, then this machine's folders."""
    now = now or utcnow()
    grace = timedelta(seconds=settings.orphan_grace_s)
    report = SweepReport()
    report.objects = sweep_objects(storage=storage, grace=grace, now=now, dry_run=dry_run)
    report.folders = sweep_staging_folders(
        settings.job_staging_dir, grace=grace, now=now, dry_run=dry_run
    ) + sweep_sandbox_folders(settings.sandbox_dir, grace=grace, now=now, dry_run=dry_run)
    return report


def sweep_objects(
    *, storage: Storage, grace: timedelta, now: datetime, dry_run: bool = False
) -> list[str]:
    # Listed before the rows are read: an object old enough when listed had its row committed
    # (or never will) long before the rows are read.
    by_owner: dict[Owner, list[StoredObject]] = defaultdict(list)
    for stored in storage.list_objects(""):
        try:
            check_key(stored.key)
        except StorageError:  # not written by modelpress: not this sweeper's to judge
            continue
        owner = owner_of(stored.key)
        if owner is not None:
            by_owner[owner].append(stored)
    owned = _owners_with_rows(list(by_owner))
    removed: list[str] = []
    for owner, objects in sorted(by_owner.items(), key=lambda item: item[0].resource_id):
        if owner in owned:
            continue
        old = [o for o in objects if now - o.stored_at >= grace]
        if not old:
            continue
        removed.extend(o.key for o in old)
        if dry_run:
            continue
        if len(old) == len(objects):
            # The whole folder (local storage drops the empty folders along with the files).
            storage.delete_prefix(f"{owner.project_id}/{owner.kind}/{owner.resource_id}")
        else:
            for stored in old:
                storage.delete(stored.key)
    for key in removed:
        log.info("sweeper: %s object %s", "would remove" if dry_run else "removed", key)
    return sorted(removed)


def _owners_with_rows(owners: list[Owner]) -> set[Owner]:
    """The owners whose row exists in their project (a job: with its artifacts not expired)."""
    found: set[Owner] = set()
    tables: dict[OwnerKind, type[StoredModel] | type[Dataset] | type[Job]] = {
        "models": StoredModel,
        "datasets": Dataset,
        "jobs": Job,
    }
    with session_scope() as session:
        for kind, table in tables.items():
            wanted = {o for o in owners if o.kind == kind}
            ids = sorted({o.resource_id for o in wanted})
            for start in range(0, len(ids), _CHUNK):
                chunk = ids[start : start + _CHUNK]
                for row_id, project_id in _live_rows(session, table, chunk):
                    owner = Owner(kind=kind, project_id=project_id, resource_id=row_id)
                    if owner in wanted:
                        found.add(owner)
    return found


def _live_rows(
    session: Session, table: type[StoredModel] | type[Dataset] | type[Job], ids: list[str]
) -> Iterable[tuple[str, str]]:
    query = select(table.id, table.project_id).where(table.id.in_(ids))
    if table is Job:
        query = query.where(Job.artifacts_expired_at.is_(None))
    return [(row_id, project_id) for row_id, project_id in session.execute(query).all()]


def sweep_staging_folders(
    root: Path, *, grace: timedelta, now: datetime, dry_run: bool = False
) -> list[Path]:
    """A worker's per-attempt folders (`<job id>-<random>`) whose job is not running."""
    candidates: dict[Path, str] = {}
    for folder in _old_folders(root, grace=grace, now=now):
        candidates[folder] = folder.name.split("-", 1)[0]
    if not candidates:
        return []
    with session_scope() as session:
        running = set(
            session.scalars(
                select(Job.id).where(
                    Job.id.in_(sorted(set(candidates.values()))), Job.status.in_(_RUNNING)
                )
            ).all()
        )
    stale = sorted(folder for folder, job_id in candidates.items() if job_id not in running)
    return _remove(stale, dry_run=dry_run)


def sweep_sandbox_folders(
    root: Path, *, grace: timedelta, now: datetime, dry_run: bool = False
) -> list[Path]:
    """Job hosts' scratch folders (`<pid>-<random>`) whose pool process is gone. Only a
    process on this machine can tell, so each worker sweeps its own folders."""
    stale = sorted(
        folder
        for folder in _old_folders(root, grace=grace, now=now)
        if (pid := folder.name.split("-", 1)[0]).isdigit() and not Path(f"/proc/{pid}").exists()
    )
    return _remove(stale, dry_run=dry_run)


def _old_folders(root: Path, *, grace: timedelta, now: datetime) -> list[Path]:
    if not root.is_dir():
        return []
    found: list[Path] = []
    for entry in os.scandir(root):
        try:
            if not entry.is_dir(follow_symlinks=False):
                continue
            modified = datetime.fromtimestamp(entry.stat(follow_symlinks=False).st_mtime, UTC)
        except FileNotFoundError:  # removed while listed
            continue
        if now - modified >= grace:
            found.append(Path(entry.path))
    return found


def _remove(folders: list[Path], *, dry_run: bool) -> list[Path]:
    for folder in folders:
        log.info("sweeper: %s folder %s", "would remove" if dry_run else "removed", folder)
        if not dry_run:
            shutil.rmtree(folder, ignore_errors=True)
    return folders
