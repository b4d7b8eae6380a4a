"""The jobs list."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from sqlalchemy import select

from api.deps import SessionDep
from api.schemas import JobOut
from core.tables import Job
from web.auth import Viewer
from web.templating import render

router = APIRouter(include_in_schema=False)


@router.get("/jobs", response_class=HTMLResponse)
def jobs_page(request: Request, viewer: Viewer, session: SessionDep) -> HTMLResponse:
    rows = session.scalars(
        select(Job)
        .where(Job.project_id == viewer.project_id)
        .order_by(Job.created_at.desc(), Job.id.desc())
        .limit(50)
    ).all()
    return render(request, "jobs/list.html", viewer=viewer, jobs=[JobOut.of(r) for r in rows])
