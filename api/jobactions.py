"""Canceling and retrying a job: the API's routes and the dashboard's buttons do the same,
with the same answers when the job is in a state that does not allow it."""

from __future__ import annotations

from sqlalchemy.orm import Session

from api.errors import Problem
from api.submit import advance_searches, commit_jobs, new_job, send_committed
from core import jobstate
from core.jobspec import load_stored_spec
from core.settings import Settings
from core.tables import Job, JobStatus


def cancel(session: Session, job: Job) -> Job:
    """A queued job is canceled at once, a running one is told to stop (`canceling`); asking
    again while it stops changes nothing. Committed; 409 for a job already final."""
    if job.status == JobStatus.canceling:
        return job
    if not jobstate.request_cancel(session, job):  # `job` holds the state that refused it
        raise Problem(
            409,
            f"the job is already {job.status}; only queued or running jobs can be canceled",
            type="job_not_cancelable",
        )
    session.commit()
    # A search ends now, with the best model its trials found so far.
    advance_searches(session, [job])
    session.refresh(job)
    return job


def retry(session: Session, settings: Settings, job: Job) -> Job:
    """A new job with the same spec as a failed or canceled one, committed and sent; the old
    job and its artifacts stay as they are, and the new one's `retry_of` names it."""
    if job.status not in (JobStatus.failed, JobStatus.canceled):
        raise Problem(
            409,
            f"the job is {job.status}; only failed or canceled jobs can be retried",
            type="job_not_retryable",
        )
    try:
        again = new_job(
            session,
            settings,
            job.project_id,
            load_stored_spec(job.spec),
            loc=["spec"],
            retry_of=job.id,
        )
        # Committed once its model and datasets are locked and still there (core.inuse).
        commit_jobs(session, [again])
    except Problem as exc:  # e.g. its model or dataset was deleted since
        raise Problem(
            409, f"the job cannot run again as it was: {exc.detail}", type="job_not_retryable"
        ) from exc
    send_committed(session, [again])
    return again
