"""Models and datasets: the lists, a page for each, its download, and the upload forms.

Uploads go through the API's own code: `api.uploads.receive_upload` streams the file to disk
and holds it to MODELPRESS_MAX_UPLOAD_BYTES, `api.stored_uploads` checks and stores it. The
upload routes are listed in `STREAMED_ROUTES`, so the request guard lets their bodies past
the JSON body limit (it knows the API's multipart routes from the OpenAPI document, where
dashboard routes are not)."""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import partial
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from sqlalchemy import Text, cast, select
from sqlalchemy.orm import Session

from api.deps import SessionDep, SettingsDep, StorageDep
from api.downloads import stored_file_response
from api.errors import Problem
from api.owned import get_owned
from api.pagination import paginate
from api.schemas import DatasetOut, JobOut, ModelOut
from api.stored_uploads import store_dataset, store_model
from api.uploads import receive_upload
from core.settings import get_settings
from core.tables import Dataset, Job, JobKind, StoredModel
from web.auth import Viewer, Writer
from web.templating import render

router = APIRouter(include_in_schema=False)

PAGE_SIZE = 50
#: Jobs listed on a model's or dataset's page (newest first); the jobs list has the rest.
JOBS_SHOWN = 50

#: (method, path) of the dashboard routes whose body is a streamed upload.
STREAMED_ROUTES = [
    ("POST", re.compile("/models/upload")),
    ("POST", re.compile("/datasets/upload")),
]


def _page(
    request: Request,
    viewer: Viewer,
    session: Session,
    *,
    table: type[StoredModel] | type[Dataset],
    page_token: str | None,
    status_code: int = 200,
    upload_error: str | None = None,
) -> HTMLResponse:
    query = select(table).where(table.project_id == viewer.project_id)
    rows, next_token = paginate(session, query, table, page_size=PAGE_SIZE, page_token=page_token)
    kind = "models" if table is StoredModel else "datasets"
    context: dict[str, Any] = {}
    if table is Dataset:
        context["models"] = _project_models(session, viewer.project_id)
    return render(
        request,
        f"library/{kind}.html",
        viewer=viewer,
        status_code=status_code,
        nav=kind,
        items=[ModelOut.of(r) if table is StoredModel else DatasetOut.of(r) for r in rows],
        next_token=next_token,
        first_page=not page_token,
        upload_error=upload_error,
        max_upload_bytes=get_settings().max_upload_bytes,
        **context,
    )


def _project_models(session: Session, project_id: str) -> list[StoredModel]:
    return list(
        session.scalars(
            select(StoredModel)
            .where(StoredModel.project_id == project_id)
            .order_by(StoredModel.created_at.desc())
            .limit(500)
        ).all()
    )


def _jobs_using(session: Session, project_id: str, *, column: Any, resource_id: str) -> list[Job]:
    """Jobs whose JSON list `column` holds `resource_id`: the LIKE narrows the rows in the
    database (on SQLite and PostgreSQL alike), the exact test is done here."""
    rows = session.scalars(
        select(Job)
        .where(Job.project_id == project_id, cast(column, Text).like(f'%"{resource_id}"%'))
        .order_by(Job.created_at.desc(), Job.id.desc())
        .limit(JOBS_SHOWN * 2)
    ).all()
    return [job for job in rows if resource_id in (getattr(job, column.key) or [])]


def _newest_first(jobs: list[Job]) -> list[Job]:
    unique = {job.id: job for job in jobs}
    return sorted(unique.values(), key=lambda j: (j.created_at, j.id), reverse=True)[:JOBS_SHOWN]


@router.get("/models", response_class=HTMLResponse)
def models_page(
    request: Request, viewer: Viewer, session: SessionDep, page_token: str | None = None
) -> HTMLResponse:
    return _page(request, viewer, session, table=StoredModel, page_token=page_token)


@router.get("/models/{model_id}", response_class=HTMLResponse)
def model_page(
    model_id: str, request: Request, viewer: Viewer, session: SessionDep
) -> HTMLResponse:
    row = get_owned(session, StoredModel, model_id, project_id=viewer.project_id)
    optimized = session.scalars(
        select(Job)
        .where(
            Job.project_id == viewer.project_id,
            Job.model_id == row.id,
            Job.kind != JobKind.trial,
        )
        .order_by(Job.created_at.desc(), Job.id.desc())
        .limit(JOBS_SHOWN)
    ).all()
    as_student = _jobs_using(
        session, viewer.project_id, column=Job.extra_model_ids, resource_id=row.id
    )
    return render(
        request,
        "library/model.html",
        viewer=viewer,
        nav="models",
        model=ModelOut.of(row),
        jobs=[JobOut.of(j) for j in _newest_first([*optimized, *as_student])],
        roles={j.id: "distillation student" for j in as_student}
        | {j.id: "optimized" for j in optimized},
    )


@router.get("/models/{model_id}/download")
def model_download(
    model_id: str, request: Request, viewer: Viewer, session: SessionDep, storage: StorageDep
) -> Response:
    row = get_owned(session, StoredModel, model_id, project_id=viewer.project_id)
    return stored_file_response(request, storage, row)


@router.get("/datasets", response_class=HTMLResponse)
def datasets_page(
    request: Request, viewer: Viewer, session: SessionDep, page_token: str | None = None
) -> HTMLResponse:
    return _page(request, viewer, session, table=Dataset, page_token=page_token)


@router.get("/datasets/{dataset_id}", response_class=HTMLResponse)
def dataset_page(
    dataset_id: str, request: Request, viewer: Viewer, session: SessionDep
) -> HTMLResponse:
    row = get_owned(session, Dataset, dataset_id, project_id=viewer.project_id)
    jobs = _jobs_using(session, viewer.project_id, column=Job.dataset_ids, resource_id=row.id)
    return render(
        request,
        "library/dataset.html",
        viewer=viewer,
        nav="datasets",
        dataset=DatasetOut.of(row),
        jobs=[JobOut.of(j) for j in _newest_first(jobs)],
        roles={j.id: "reads it" for j in jobs},
    )


@router.get("/datasets/{dataset_id}/download")
def dataset_download(
    dataset_id: str, request: Request, viewer: Viewer, session: SessionDep, storage: StorageDep
) -> Response:
    row = get_owned(session, Dataset, dataset_id, project_id=viewer.project_id)
    return stored_file_response(request, storage, row)


def _wants_json(request: Request) -> bool:
    """The page's script asks for JSON (it shows the outcome in place); a plain form post
    gets a page."""
    return "application/json" in request.headers.get("accept", "")


async def _upload(
    request: Request,
    viewer: Writer,
    session: Session,
    settings: SettingsDep,
    storage: StorageDep,
    *,
    table: type[StoredModel] | type[Dataset],
    store: Callable[..., StoredModel | Dataset],
) -> Response:
    kind = "models" if table is StoredModel else "datasets"
    try:
        upload = await receive_upload(
            request, tmp_dir=settings.tmp_dir, max_bytes=settings.max_upload_bytes
        )
        row = await run_in_threadpool(
            partial(
                store,
                upload,
                project_id=viewer.project_id,
                session=session,
                settings=settings,
                storage=storage,
            )
        )
    except Problem as exc:
        session.rollback()
        if _wants_json(request):
            return JSONResponse({"error": exc.detail, "type": exc.type}, status_code=exc.status)
        return _page(
            request,
            viewer,
            session,
            table=table,
            page_token=None,
            status_code=exc.status,
            upload_error=exc.detail,
        )
    url = f"/{kind}/{row.id}"
    if _wants_json(request):
        return JSONResponse({"id": row.id, "url": url}, status_code=201)
    return RedirectResponse(url, status_code=303)


@router.post("/models/upload")
async def upload_model(
    request: Request,
    viewer: Writer,
    session: SessionDep,
    settings: SettingsDep,
    storage: StorageDep,
) -> Response:
    return await _upload(
        request, viewer, session, settings, storage, table=StoredModel, store=store_model
    )


@router.post("/datasets/upload")
async def upload_dataset(
    request: Request,
    viewer: Writer,
    session: SessionDep,
    settings: SettingsDep,
    storage: StorageDep,
) -> Response:
    return await _upload(
        request, viewer, session, settings, storage, table=Dataset, store=store_dataset
    )
