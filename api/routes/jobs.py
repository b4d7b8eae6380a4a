"""/v1/jobs: submit a spec, follow it, cancel it, list its artifacts."""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Header, Query, Response
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from api.deps import ReadKey, SessionDep, SettingsDep, WriteKey
from api.errors import Problem, field_error, not_found
from api.pagination import paginate
from api.routes.datasets import get_owned_dataset
from api.schemas import ArtifactOut, JobOut, Page
from core import jobstate
from core.db import new_id, utcnow
from core.jobspec import JobSpec
from core.models import Artifact, Job, JobStatus, StoredModel
from core.queue import enqueue_job
from optimizers.checks import check_spec
from optimizers.errors import OptimizerError
from optimizers.types import DatasetInfo, ModelInfo

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

JobStatusName = Annotated[
    list[JobStatus] | None, Query(description="Only jobs in these states (repeatable).")
]


def _request_hash(spec: JobSpec) -> str:
    canonical = json.dumps(spec.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _find_by_idempotency_key(session: SessionDep, project_id: str, key: str) -> Job | None:
    return session.scalar(
        select(Job).where(Job.project_id == project_id, Job.idempotency_key == key)
    )


def _replay(existing: Job, request_hash: str, response: Response) -> JobOut:
    if existing.request_hash != request_hash:
        raise Problem(
            422,
            "this Idempotency-Key was already used with a different job spec",
            type="idempotency-key-reused",
        )
    response.headers["Location"] = f"/v1/jobs/{existing.id}"
    response.headers["Idempotent-Replayed"] = "true"
    return JobOut.of(existing)


@router.post("", status_code=202, response_model=JobOut)
def create_job(
    spec: JobSpec,
    response: Response,
    key: WriteKey,
    session: SessionDep,
    settings: SettingsDep,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> JobOut:
    request_hash = _request_hash(spec)
    if idempotency_key:
        existing = _find_by_idempotency_key(session, key.project_id, idempotency_key)
        if existing is not None:
            return _replay(existing, request_hash, response)

    model = session.get(StoredModel, spec.model_id)
    if model is None or model.project_id != key.project_id:
        raise field_error(["body", "model_id"], f"no model {spec.model_id!r} in this project")
    datasets: dict[str, DatasetInfo] = {}
    for dataset_id in spec.dataset_ids():
        try:
            row = get_owned_dataset(session, key.project_id, dataset_id)
        except Problem:
            raise field_error(["body"], f"no dataset {dataset_id!r} in this project") from None
        datasets[dataset_id] = DatasetInfo.model_validate(row.info)
    models = _extra_models(session, key.project_id, spec)
    try:
        check_spec(ModelInfo.model_validate(model.info), spec, datasets, models=models)
    except OptimizerError as exc:
        raise Problem(422, exc.message, type=exc.type.replace("_", "-")) from exc

    now = utcnow()
    job = Job(
        id=new_id("job"),
        project_id=key.project_id,
        model_id=model.id,
        # What the user set, not the defaults filled in: a dump with every default does not
        # validate again for every pass (e.g. a structured prune with magnitude's `sparsity`).
        spec=spec.model_dump(mode="json", exclude_unset=True),
        dataset_ids=list(datasets),
        extra_model_ids=list(models),
        queue="gpu" if spec.benchmark.device == "cuda" else "cpu",
        status=JobStatus.queued,
        progress=0.0,
        progress_message="waiting for a worker",
        attempts=0,
        max_attempts=spec.max_attempts or settings.max_attempts,
        idempotency_key=idempotency_key,
        request_hash=request_hash,
        created_at=now,
        queued_at=now,
    )
    session.add(job)
    try:
        session.commit()
    except IntegrityError:  # a concurrent request with the same Idempotency-Key won
        session.rollback()
        existing = _find_by_idempotency_key(session, key.project_id, idempotency_key or "")
        if existing is None:
            raise
        return _replay(existing, request_hash, response)
    # Only now is the row visible to a worker; the broker carries nothing but the id.
    try:
        enqueue_job(job.id, job.queue)
    except Exception:
        log.exception("could not enqueue job %s; it stays queued until it is re-sent", job.id)
        job.progress_message = "not yet handed to a worker: the broker is unreachable"
        session.commit()
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return JobOut.of(job)


def _extra_models(session: SessionDep, project_id: str, spec: JobSpec) -> dict[str, ModelInfo]:
    """The other models the passes read (distillation students), each of this project."""
    found: dict[str, ModelInfo] = {}
    for index, config in enumerate(spec.passes):
        for model_id in config.model_ids():
            if model_id in found:
                continue
            row = session.get(StoredModel, model_id)
            if row is None or row.project_id != project_id:
                raise field_error(
                    ["body", "passes", index, "student", "model_id"],
                    f"no model {model_id!r} in this project",
                )
            found[model_id] = ModelInfo.model_validate(row.info)
    return found


@router.get("", response_model=Page[JobOut])
def list_jobs(
    key: ReadKey,
    session: SessionDep,
    status: JobStatusName = None,
    model_id: str | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    page_size: int = 50,
    page_token: str | None = None,
) -> Page[JobOut]:
    query = select(Job).where(Job.project_id == key.project_id)
    if status:
        query = query.where(Job.status.in_([s.value for s in status]))
    if model_id:
        query = query.where(Job.model_id == model_id)
    if created_after:
        query = query.where(Job.created_at > created_after)
    if created_before:
        query = query.where(Job.created_at < created_before)
    rows, token = paginate(session, query, Job, page_size=page_size, page_token=page_token)
    return Page(items=[JobOut.of(r) for r in rows], next_page_token=token)


def get_owned_job(session: SessionDep, project_id: str, job_id: str) -> Job:
    row = session.get(Job, job_id)
    if row is None or row.project_id != project_id:
        raise not_found("job", job_id)
    return row


@router.get("/{job_id}", response_model=JobOut)
def get_job(job_id: str, key: ReadKey, session: SessionDep) -> JobOut:
    return JobOut.of(get_owned_job(session, key.project_id, job_id))


@router.post("/{job_id}/cancel", status_code=202, response_model=JobOut)
def cancel_job(job_id: str, key: WriteKey, session: SessionDep) -> JobOut:
    job = get_owned_job(session, key.project_id, job_id)
    if job.status == JobStatus.cancelling:
        return JobOut.of(job)
    if not jobstate.request_cancel(session, job):
        session.refresh(job)
        raise Problem(
            409,
            f"the job is already {job.status}; only queued or running jobs can be canceled",
            type="job-not-cancelable",
        )
    session.commit()
    session.refresh(job)
    return JobOut.of(job)


@router.get("/{job_id}/artifacts", response_model=list[ArtifactOut])
def list_job_artifacts(job_id: str, key: ReadKey, session: SessionDep) -> list[ArtifactOut]:
    job = get_owned_job(session, key.project_id, job_id)
    rows = session.scalars(
        select(Artifact).where(Artifact.job_id == job.id).order_by(Artifact.created_at)
    ).all()
    return [ArtifactOut.of(r) for r in rows]
