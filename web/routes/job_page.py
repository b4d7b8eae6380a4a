"""A job's page, its live fragment and its artifacts' downloads."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from api.deps import SessionDep, StorageDep
from api.downloads import stored_file_response
from api.errors import not_found
from api.owned import get_owned
from core.tables import Artifact, Job
from web.auth import Viewer
from web.jobview import job_context
from web.paths import JOB
from web.routes.jobs import POLL_S, model_names
from web.templating import render

router = APIRouter(include_in_schema=False)


def _page(viewer: Viewer, session: SessionDep, storage: StorageDep, job_id: str) -> dict[str, Any]:
    row = get_owned(session, Job, job_id, project_id=viewer.project_id)
    context = job_context(session, storage, row)
    context["model_name"] = model_names(session, viewer.project_id).get(row.model_id or "")
    context["poll_s"] = POLL_S
    return context


@router.get(JOB, response_class=HTMLResponse)
def job_page(
    job_id: str, request: Request, viewer: Viewer, session: SessionDep, storage: StorageDep
) -> HTMLResponse:
    context = _page(viewer, session, storage, job_id)
    return render(request, "jobs/page.html", viewer=viewer, **context)


@router.get(JOB + "/live", response_class=HTMLResponse)
def job_live(
    job_id: str, request: Request, viewer: Viewer, session: SessionDep, storage: StorageDep
) -> HTMLResponse:
    """The page's body alone, polled while the job is active; once it is final the body it
    returns no longer polls, and carries the verdict and the charts."""
    context = _page(viewer, session, storage, job_id)
    return render(request, "jobs/_body.html", viewer=viewer, **context)


@router.get(JOB + "/artifacts/{artifact_id}")
def job_artifact(
    job_id: str,
    artifact_id: str,
    request: Request,
    viewer: Viewer,
    session: SessionDep,
    storage: StorageDep,
) -> Response:
    job = get_owned(session, Job, job_id, project_id=viewer.project_id)
    artifact = get_owned(session, Artifact, artifact_id, project_id=viewer.project_id)
    if artifact.job_id != job.id:
        # Same answer as an id of another project: the URL names no artifact of this job.
        raise not_found("artifact", artifact_id)
    return stored_file_response(request, storage, artifact)
