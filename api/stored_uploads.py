"""What an upload becomes once its file is on disk: checked (a model by
`optimizers.formats.upload`, a dataset by `optimizers.datasets`), then a row of the project and
its file in storage; or, when the check refuses it, a problem and nothing stored. The API's
routes and the dashboard's upload forms both store through here."""

from __future__ import annotations

from sqlalchemy.orm import Session

from api.errors import Problem, answered_as
from api.owned import get_owned
from api.uploads import ZIP_EXPANSION_LIMIT, Upload, keep_upload, safe_filename
from core import storage_keys
from core.db import new_id
from core.settings import Settings
from core.storage import Storage
from core.tables import Dataset, StoredModel
from optimizers.datasets import check_fits, inspect_dataset
from optimizers.formats.kinds import storage_name
from optimizers.formats.upload import inspect_upload
from optimizers.results import ModelInfo


def store_model(
    upload: Upload, *, project_id: str, session: Session, settings: Settings, storage: Storage
) -> StoredModel:
    try:
        if upload.size_bytes == 0:
            raise Problem(422, "the uploaded file is empty", type="invalid_model")
        with answered_as(type="invalid_model"):
            info = inspect_upload(
                upload.path,
                max_total_bytes=ZIP_EXPANSION_LIMIT * settings.max_upload_bytes,
                fields=upload.fields,
                tmp_dir=upload.scratch_dir,
            )
        model_id = new_id("mdl")
        stored_name = storage_name(info.format)
        row = StoredModel(
            id=model_id,
            project_id=project_id,
            name=safe_filename(upload.fields.get("name") or upload.filename, stored_name),
            format=info.format,
            sha256=upload.sha256,
            size_bytes=upload.size_bytes,
            storage_key=storage_keys.model_key(project_id, model_id, stored_name),
            info=info.model_dump(mode="json"),
        )
        prefix = storage_keys.model_prefix(project_id, model_id)
        keep_upload(upload, row, session=session, storage=storage, prefix=prefix)
    finally:
        upload.discard()
    return row


def store_dataset(
    upload: Upload, *, project_id: str, session: Session, settings: Settings, storage: Storage
) -> Dataset:
    try:
        with answered_as(type="invalid_dataset", detail_prefix="not a usable dataset: "):
            info = inspect_dataset(
                upload.path, max_total_bytes=ZIP_EXPANSION_LIMIT * settings.max_upload_bytes
            )
        model_id = upload.fields.get("model_id")
        if model_id:
            model = get_owned(session, StoredModel, model_id, project_id=project_id)
            with answered_as(type="dataset_mismatch"):
                check_fits(ModelInfo.model_validate(model.info), info, purpose="dataset")
        dataset_id = new_id("dst")
        row = Dataset(
            id=dataset_id,
            project_id=project_id,
            name=safe_filename(
                upload.fields.get("name") or upload.filename, storage_keys.DATASET_FILE
            ),
            sha256=upload.sha256,
            size_bytes=upload.size_bytes,
            storage_key=storage_keys.dataset_key(project_id, dataset_id),
            info=info.model_dump(mode="json"),
        )
        prefix = storage_keys.dataset_prefix(project_id, dataset_id)
        keep_upload(upload, row, session=session, storage=storage, prefix=prefix)
    finally:
        upload.discard()
    return row
