"""The jobs list: filters, pages, live rows while jobs run, and the cancel and retry buttons."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from sqlalchemy import select
from sqlalchemy.orm import Session

from api import jobactions
from api.deps import SessionDep, SettingsDep, live_queues
from api.errors import Problem
from api.owned import get_owned
from api.pagination import paginate
from api.schemas import JobOut
from core.tables import Job, JobKind, JobStatus, StoredModel
from web.auth import Viewer, Writer
from web.paths import JOB
from web.templating import render

router = APIRouter(include_in_schema=False)

PAGE_SIZE = 50
ACTIVE = {JobStatus.queued.value, JobStatus.running.value, JobStatus.canceling.value}
#: Seconds between refreshes of a page that shows an active job.
POLL_S = 2

Text = Annotated[str | None, Query(max_length=200)]


@dataclass(frozen=True)
class Filters:
    status: str = ""
    model_id: str = ""
    batch_id: str = ""
    created_from: str = ""
    created_to: str = ""

    def query(self, **extra: str | None) -> str:
        """This filter (and `extra`, such as a page token) as a query string."""
        values = {**self.__dict__, **extra}
        return urlencode({k: v for k, v in values.items() if v})


def _day(text: str, field: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise Problem(
            422, f"{field} must be a date such as 2026-11-30, not {text[:40]!r}", type="bad_filter"
        ) from None


def _listed(
    session: Session, project_id: str, *, filters: Filters, page_token: str | None
) -> tuple[list[JobOut], str | None]:
    """The API's own query (GET /v1/jobs), keyset pages included."""
    # Trials are shown on their search's page, as the API lists them under their search.
    query = select(Job).where(Job.project_id == project_id, Job.kind != JobKind.trial)
    if filters.status:
        if filters.status not in {s.value for s in JobStatus}:
            raise Problem(422, f"there is no job status {filters.status[:40]!r}", type="bad_filter")
        query = query.where(Job.status == filters.status)
    if filters.model_id:
        query = query.where(Job.model_id == filters.model_id)
    if filters.batch_id:
        query = query.where(Job.batch_id == filters.batch_id)
    # Dates are days in UTC (the times shown are UTC); the "to" day is included.
    if filters.created_from:
        start = datetime.combine(_day(filters.created_from, "From"), time(), UTC)
        query = query.where(Job.created_at >= start)
    if filters.created_to:
        end = datetime.combine(_day(filters.created_to, "To"), time(), UTC) + timedelta(days=1)
        query = query.where(Job.created_at < end)
    rows, token = paginate(session, query, Job, page_size=PAGE_SIZE, page_token=page_token)
    served = live_queues(session)
    return [JobOut.of(r, live_queues=served) for r in rows], token


def model_names(session: Session, project_id: str) -> dict[str, str]:
    rows = session.execute(
        select(StoredModel.id, StoredModel.name)
        .where(StoredModel.project_id == project_id)
        .order_by(StoredModel.name)
    ).all()
    return {row.id: row.name for row in rows}


def _context(
    session: Session, viewer: Viewer, *, filters: Filters, page_token: str | None
) -> dict[str, Any]:
    error = None
    try:
        jobs, next_token = _listed(
            session, viewer.project_id, filters=filters, page_token=page_token
        )
    except Problem as exc:  # a bad filter is said above the form, which keeps the values
        jobs, next_token, error = [], None, exc.detail
    here = filters.query(page_token=page_token)
    return {
        "jobs": jobs,
        "filters": filters,
        "statuses": [s.value for s in JobStatus],
        "models": model_names(session, viewer.project_id),
        "next_url": f"/jobs?{filters.query(page_token=next_token)}" if next_token else None,
        "first_url": f"/jobs?{filters.query()}" if page_token else None,
        "rows_url": f"/jobs/rows?{here}",
        "here": f"/jobs?{here}" if here else "/jobs",
        "active": any(job.status in ACTIVE for job in jobs),
        "poll_s": POLL_S,
        "filter_error": error,
    }


def _filters(
    status: Text = None,
    model_id: Text = None,
    batch_id: Text = None,
    created_from: Text = None,
    created_to: Text = None,
) -> Filters:
    return Filters(
        status=status or "",
        model_id=model_id or "",
        batch_id=(batch_id or "").strip(),
        created_from=created_from or "",
        created_to=created_to or "",
    )


#: The list's filters, read from the query string by the list page and its live rows alike.
ListFilters = Annotated[Filters, Depends(_filters)]


@router.get("/jobs", response_class=HTMLResponse)
def jobs_page(
    request: Request,
    viewer: Viewer,
    session: SessionDep,
    filters: ListFilters,
    page_token: Annotated[str | None, Query(max_length=600)] = None,
) -> HTMLResponse:
    context = _context(session, viewer, filters=filters, page_token=page_token)
    return render(
        request,
        "jobs/list.html",
        viewer=viewer,
        status_code=422 if context["filter_error"] else 200,
        **context,
    )


@router.get("/jobs/rows", response_class=HTMLResponse)
def jobs_rows(
    request: Request,
    viewer: Viewer,
    session: SessionDep,
    filters: ListFilters,
    page_token: Annotated[str | None, Query(max_length=600)] = None,
) -> HTMLResponse:
    """The table's body alone: what the list page polls while a job on it is active."""
    context = _context(session, viewer, filters=filters, page_token=page_token)
    return render(request, "jobs/_rows.html", viewer=viewer, **context)


def back_to(target: str | None, default: str) -> str:
    # Only a path on this site: "//host" or "https://host" would send the user elsewhere.
    if target and target.startswith("/") and not target.startswith(("//", "/\\")):
        return target
    return default


Back = Annotated[str | None, Form(max_length=2000)]


@router.post(JOB + "/cancel")
def cancel(job_id: str, viewer: Writer, session: SessionDep, next: Back = None) -> RedirectResponse:
    job = get_owned(session, Job, job_id, project_id=viewer.project_id)
    jobactions.cancel(session, job)
    return RedirectResponse(back_to(next, f"/jobs/{job_id}"), status_code=303)


@router.post(JOB + "/retry")
def retry(
    job_id: str, viewer: Writer, session: SessionDep, settings: SettingsDep
) -> RedirectResponse:
    job = get_owned(session, Job, job_id, project_id=viewer.project_id)
    again = jobactions.retry(session, settings, job)
    return RedirectResponse(f"/jobs/{again.id}", status_code=303)
