"""/v1/datasets: `.npz` files whose arrays are named after a model's inputs (+ `labels`)."""

from __future__ import annotations

from functools import partial

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.deps import ReadKey, SessionDep, SettingsDep, StorageDep, WriteKey
from api.errors import Problem, not_found
from api.pagination import Sha256Filter, paginate
from api.routes.models import ZIP_EXPANSION_LIMIT, get_owned_model
from api.schemas import DatasetOut, Page
from api.uploads import Upload, multipart_body_schema, receive_upload, safe_filename
from core.db import new_id
from core.models import ACTIVE_STATUSES, ApiKey, Dataset, Job
from core.settings import Settings
from core.storage import Storage
from optimizers.datasets import check_fits, inspect_dataset
from optimizers.errors import OptimizerError
from optimizers.types import ModelInfo

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
            _store_dataset, upload, key=key, session=session, settings=settings, storage=storage
        )
    )
    response.headers["Location"] = f"/v1/datasets/{row.id}"
    return DatasetOut.of(row)


def _store_dataset(
    upload: Upload, *, key: ApiKey, session: Session, settings: Settings, storage: Storage
) -> Dataset:
    try:
        try:
            info = inspect_dataset(
                upload.path, max_total_bytes=ZIP_EXPANSION_LIMIT * settings.max_upload_bytes
            )
        except OptimizerError as exc:
            raise Problem(
                422, f"not a usable dataset: {exc.message}", type="invalid-dataset"
            ) from exc
        model_id = upload.fields.get("model_id")
        if model_id:
            model = get_owned_model(session, key.project_id, model_id)
            try:
                check_fits(ModelInfo.model_validate(model.info), info, purpose="dataset")
            except OptimizerError as exc:
                raise Problem(422, exc.message, type="dataset-mismatch") from exc
        dataset_id = new_id("dst")
        storage_key = f"{key.project_id}/datasets/{dataset_id}/data.npz"
        row = Dataset(
            id=dataset_id,
            project_id=key.project_id,
            name=safe_filename(upload.fields.get("name") or upload.filename, "data.npz"),
            sha256=upload.sha256,
            size_bytes=upload.size_bytes,
            storage_key=storage_key,
            info=info.model_dump(mode="json"),
        )
        session.add(row)
        session.flush()
        storage.put_file(storage_key, upload.path)
    finally:
        upload.discard()
    try:
        session.commit()
    except Exception:
        storage.delete_prefix(f"{key.project_id}/datasets/{dataset_id}")
        raise
    return row


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


def get_owned_dataset(session: SessionDep, project_id: str, dataset_id: str) -> Dataset:
    row = session.get(Dataset, dataset_id)
    if row is None or row.project_id != project_id:
        raise not_found("dataset", dataset_id)
    return row


@router.get("/{dataset_id}", response_model=DatasetOut)
def get_dataset(dataset_id: str, key: ReadKey, session: SessionDep) -> DatasetOut:
    return DatasetOut.of(get_owned_dataset(session, key.project_id, dataset_id))


@router.delete("/{dataset_id}", status_code=204)
def delete_dataset(
    dataset_id: str, key: WriteKey, session: SessionDep, storage: StorageDep
) -> Response:
    row = get_owned_dataset(session, key.project_id, dataset_id)
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
            type="dataset-in-use",
        )
    session.delete(row)
    session.commit()
    storage.delete_prefix(f"{key.project_id}/datasets/{dataset_id}")
    return Response(status_code=204)
