"""/v1/datasets: `.npz` files whose arrays are named after a model's inputs (+ `labels`)."""

from __future__ import annotations

from functools import partial

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import select

from api.deps import ReadKey, SessionDep, SettingsDep, StorageDep, WriteKey
from api.errors import Problem
from api.owned import get_owned
from api.pagination import Sha256Filter, paginate
from api.schemas import DatasetOut, Page
from api.stored_uploads import store_dataset
from api.uploads import (
    multipart_body_schema,
    receive_upload,
)
from core import storage_keys
from core.tables import ACTIVE_STATUSES, Dataset, Job

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])


@router.post(
    "",
    status_code=201,
    response_model=DatasetOut,
    openapi_extra=multipart_body_schema(
        "A .npz archive: one array per model input (first axis = samples), optional "
        "integer `labels`. Add a form field `model_id` to check it against a model now."
    ),
)
async def upload_dataset(
    request: Request,
    response: Response,
    key: WriteKey,
    session: SessionDep,
    settings: SettingsDep,
    storage: StorageDep,
) -> DatasetOut:
    upload = await receive_upload(
        request, tmp_dir=settings.tmp_dir, max_bytes=settings.max_upload_bytes
    )
    # Inspecting, storing, the row and its commit wait on disks and the database: in a worker
    # thread, so the event loop goes on serving other requests meanwhile.
    row = await run_in_threadpool(
        partial(
            store_dataset,
            upload,
            project_id=key.project_id,
            session=session,
            settings=settings,
            storage=storage,
        )
    )
    response.headers["Location"] = f"/v1/datasets/{row.id}"
    return DatasetOut.of(row)


@router.get("", response_model=Page[DatasetOut])
def list_datasets(
    key: ReadKey,
    session: SessionDep,
    page_size: int = 50,
    page_token: str | None = None,
    sha256: Sha256Filter = None,
) -> Page[DatasetOut]:
    query = select(Dataset).where(Dataset.project_id == key.project_id)
    if sha256:
        query = query.where(Dataset.sha256 == sha256.lower())
    rows, token = paginate(session, query, Dataset, page_size=page_size, page_token=page_token)
    return Page(items=[DatasetOut.of(r) for r in rows], next_page_token=token)


@router.get("/{dataset_id}", response_model=DatasetOut)
def get_dataset(dataset_id: str, key: ReadKey, session: SessionDep) -> DatasetOut:
    return DatasetOut.of(get_owned(session, Dataset, dataset_id, project_id=key.project_id))


@router.delete("/{dataset_id}", status_code=204)
def delete_dataset(
    dataset_id: str, key: WriteKey, session: SessionDep, storage: StorageDep
) -> Response:
    row = get_owned(session, Dataset, dataset_id, project_id=key.project_id)
    active_jobs = session.scalars(
        select(Job.dataset_ids).where(
            Job.project_id == key.project_id, Job.status.in_(ACTIVE_STATUSES)
        )
    ).all()
    users = sum(1 for ids in active_jobs if row.id in ids)
    if users:
        raise Problem(
            409,
            f"the dataset is used by {users} unfinished job(s); cancel them first",
            type="dataset_in_use",
        )
    session.delete(row)
    session.commit()
    storage.delete_prefix(storage_keys.dataset_prefix(key.project_id, dataset_id))
    return Response(status_code=204)
