"""/v1/models: upload, inspect, list, download and delete models."""

from __future__ import annotations

from functools import partial
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import delete, select

from api.deps import ReadKey, SessionDep, SettingsDep, StorageDep, WriteKey
from api.downloads import stored_file_response
from api.errors import in_use, not_found
from api.owned import get_owned
from api.pagination import Sha256Filter, paginate
from api.removal import remove_objects
from api.schemas import ModelOut, Page
from api.stored_uploads import store_model
from api.uploads import (
    multipart_body_schema,
    receive_upload,
)
from core import storage_keys
from core.inuse import active_jobs_using, lock_for_delete
from core.tables import StoredModel

router = APIRouter(prefix="/v1/models", tags=["models"])


def _upload_body_schema() -> dict[str, Any]:
    schema = multipart_body_schema(
        "The model: an ONNX file (.onnx); a zip of one .onnx file and its external data "
        "files; a torch.export program (.pt2, torch.export.save); or a TorchScript archive "
        "(torch.jit.save). Recognized by content, not by name. Plain torch.save pickles are "
        "refused."
    )
    properties = schema["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
    properties["input_shapes"] = {
        "type": "string",
        "description": 'TorchScript only, required: JSON object of input shapes, e.g. {"x": '
        '["batch", 16]}; names are symbolic dimensions.',
    }
    properties["input_dtypes"] = {
        "type": "string",
        "description": 'TorchScript only: JSON object of input dtypes, e.g. {"x": "int64"}; '
        "default float32.",
    }
    return schema


@router.post(
    "",
    status_code=201,
    response_model=ModelOut,
    openapi_extra=_upload_body_schema(),
    responses={413: {"description": "Over MODELPRESS_MAX_UPLOAD_BYTES"}},
)
async def upload_model(
    request: Request,
    response: Response,
    key: WriteKey,
    session: SessionDep,
    settings: SettingsDep,
    storage: StorageDep,
) -> ModelOut:
    upload = await receive_upload(
        request, tmp_dir=settings.tmp_dir, max_bytes=settings.max_upload_bytes
    )
    # Inspecting, storing, the row and its commit wait on disks and the database: in a worker
    # thread, so the event loop goes on serving other requests meanwhile.
    row = await run_in_threadpool(
        partial(
            store_model,
            upload,
            project_id=key.project_id,
            session=session,
            settings=settings,
            storage=storage,
        )
    )
    response.headers["Location"] = f"/v1/models/{row.id}"
    return ModelOut.of(row)


@router.get("", response_model=Page[ModelOut])
def list_models(
    key: ReadKey,
    session: SessionDep,
    page_size: int = 50,
    page_token: str | None = None,
    sha256: Sha256Filter = None,
) -> Page[ModelOut]:
    query = select(StoredModel).where(StoredModel.project_id == key.project_id)
    if sha256:
        query = query.where(StoredModel.sha256 == sha256.lower())
    rows, token = paginate(session, query, StoredModel, page_size=page_size, page_token=page_token)
    return Page(items=[ModelOut.of(r) for r in rows], next_page_token=token)


@router.get("/{model_id}", response_model=ModelOut)
def get_model(model_id: str, key: ReadKey, session: SessionDep) -> ModelOut:
    return ModelOut.of(get_owned(session, StoredModel, model_id, project_id=key.project_id))


@router.get("/{model_id}/content", response_class=Response)
def download_model(
    model_id: str, request: Request, key: ReadKey, session: SessionDep, storage: StorageDep
) -> Response:
    row = get_owned(session, StoredModel, model_id, project_id=key.project_id)
    return stored_file_response(request, storage, row)


@router.delete("/{model_id}", status_code=204)
def delete_model(
    model_id: str, key: WriteKey, session: SessionDep, storage: StorageDep
) -> Response:
    """Deletes the model and its stored file. Refused (409 `model_in_use`) while an unfinished
    job reads it; finished jobs keep their results and show `model_id: null`."""
    get_owned(session, StoredModel, model_id, project_id=key.project_id)
    # Row lock, then the check, then the row, then the commit; the file only after it
    # (core.inuse says why this order never deletes what a job reads).
    if not lock_for_delete(session, StoredModel, model_id):
        raise not_found("model", model_id)
    users = active_jobs_using(session, project_id=key.project_id, model_id=model_id)
    if users:
        raise in_use("model", model_id, users)
    session.execute(delete(StoredModel).where(StoredModel.id == model_id))
    session.commit()
    remove_objects(storage, [storage_keys.model_prefix(key.project_id, model_id)])
    return Response(status_code=204)
