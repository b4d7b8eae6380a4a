"""Which unfinished jobs read a model or dataset, and the row locks that keep a deletion and a
job submission from crossing: nothing an unfinished job reads is ever deleted.

The two sides take their locks in an order that makes one of them wait for the other:

- Deleting a model or dataset first locks its row (`lock_for_delete`), then looks for
  unfinished jobs that read it, then deletes the row and commits; only after the commit are
  its stored objects removed (a crash in between leaves orphans, which the sweeper removes;
  never a row without its file).
- Submitting a job first writes the job row (flush), then locks the rows of every model and
  dataset it reads (`confirm_inputs`) and checks they are still there, then commits.

If the submission locks first, the deletion waits for its commit and then sees the new job
(409). If the deletion locks first, the submission waits for its commit and then finds the
row gone (the job is refused, nothing is queued). On PostgreSQL the locks are row locks
(FOR UPDATE against FOR KEY SHARE: submissions never wait for each other); SQLite has one
writer at a time, so there the job row's INSERT and the deletion's first UPDATE take the
database's write lock, and each side's check runs while it holds it.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from core.tables import ACTIVE_STATUSES, Dataset, Job, StoredModel


class InputGone(Exception):
    """A model or dataset a job reads was deleted while the job was being submitted."""

    def __init__(self, kind: str, resource_id: str) -> None:
        super().__init__(f"{kind} {resource_id!r} was deleted while the job was being submitted")
        self.kind = kind
        self.resource_id = resource_id


def lock_for_delete(
    session: Session, table: type[StoredModel] | type[Dataset], row_id: str
) -> bool:
    """Locks the row against job submissions until the transaction ends; False when the row
    is already gone (another deletion committed first)."""
    if session.get_bind().dialect.name == "sqlite":
        # A write that changes nothing: it takes SQLite's single write lock now, before the
        # check for unfinished jobs, and the check then sees every committed job.
        result = session.execute(
            update(table).where(table.id == row_id).values(name=table.name),
            execution_options={"synchronize_session": False},
        )
        return bool(getattr(result, "rowcount", 0))
    locked = session.scalar(select(table.id).where(table.id == row_id).with_for_update())
    return locked is not None


def active_jobs_using(
    session: Session, *, project_id: str, model_id: str | None = None, dataset_id: str | None = None
) -> list[str]:
    """The ids of the project's unfinished jobs that read the model (as the model to optimize
    or as a distillation student) or the dataset, oldest first."""
    rows = session.execute(
        select(Job.id, Job.model_id, Job.extra_model_ids, Job.dataset_ids)
        .where(Job.project_id == project_id, Job.status.in_(ACTIVE_STATUSES))
        .order_by(Job.created_at, Job.id)
    ).all()
    found: list[str] = []
    for job_id, job_model, extra_models, dataset_ids in rows:
        reads_model = job_model == model_id or model_id in (extra_models or [])
        reads_dataset = dataset_id in (dataset_ids or [])
        if (model_id is not None and reads_model) or (dataset_id is not None and reads_dataset):
            found.append(job_id)
    return found


def confirm_inputs(session: Session, jobs: Iterable[Job]) -> None:
    """Writes the jobs' rows, then locks every model and dataset they read and checks that
    each is still there; raises InputGone for the first that is not. The caller commits."""
    jobs = list(jobs)
    session.flush()
    model_ids: set[str] = set()
    dataset_ids: set[str] = set()
    for job in jobs:
        if job.model_id:
            model_ids.add(job.model_id)
        model_ids.update(job.extra_model_ids or [])
        dataset_ids.update(job.dataset_ids or [])
    _check_locked(session, StoredModel, "model", model_ids)
    _check_locked(session, Dataset, "dataset", dataset_ids)


def _check_locked(
    session: Session, table: type[StoredModel] | type[Dataset], kind: str, ids: set[str]
) -> None:
    if not ids:
        return
    found = set(
        session.scalars(
            select(table.id)
            .where(table.id.in_(sorted(ids)))
            .with_for_update(read=True, key_share=True)
        ).all()
    )
    for missing in sorted(ids - found):
        raise InputGone(kind, missing)
