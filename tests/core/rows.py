"""Rows written straight to the database, for tests of the job state rules."""

from __future__ import annotations

from sqlalchemy.orm import Session

from core.db import new_id, utcnow
from core.tables import Job, JobStatus, Project


def insert_job(session: Session, **values: object) -> str:
    """A committed job row of a new project, as the API queues one; `values` override."""
    project = Project(id=new_id("prj"), name=new_id("p"))
    session.add(project)
    session.flush()
    now = utcnow()
    job = Job(
        **{
            "id": new_id("job"),
            "project_id": project.id,
            "spec": {},
            "dataset_ids": [],
            "status": JobStatus.queued,
            "max_attempts": 2,
            "queued_at": now,
            # As the API queues a job: sent to the broker right after the commit.
            "sent_at": now,
            **values,
        }
    )
    session.add(job)
    session.commit()
    return job.id
