"""Runs one job: claim it, fetch its inputs, run the pipeline, store artifacts and numbers."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.synchronize import Event
from pathlib import Path, PurePosixPath
from typing import Any

import onnx
from pydantic import ValidationError
from sqlalchemy import select

from core import jobstate
from core.db import new_id, session_scope
from core.jobspec import JobLimits as RequestedLimits
from core.jobspec import JobSpec
from core.models import Artifact, Dataset, Job, JobStatus, StoredModel
from core.settings import Settings
from core.storage import Storage, StorageCheckpoints, StorageError, checkpoints_prefix
from optimizers.errors import InvalidModelError, OptimizerError
from optimizers.external_data import check_relative_location, external_data_locations
from optimizers.formats import UploadFormat, extract_onnx_zip
from optimizers.pipeline import ArtifactFiles, preload, run_pipeline
from optimizers.types import ModelInfo
from worker.monitor import JobStopped, Limits, StopReason, Supervision, run_supervised

log = logging.getLogger(__name__)

#: Progress writes are throttled; a stage change is always written.
_PROGRESS_MIN_INTERVAL_S = 0.5


@dataclass
class _StoredModel:
    key: str
    format: str
    info: ModelInfo


@dataclass
class _Inputs:
    project_id: str
    spec: JobSpec
    model: _StoredModel
    dataset_keys: dict[str, str]
    #: Other uploaded models the passes read (distillation students), by model id.
    extra_models: dict[str, _StoredModel]


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def execute_job(job_id: str, *, settings: Settings, storage: Storage) -> str | None:
    """Returns the job's final status, or None when this worker did not get the job (or lost
    it to another attempt). The work runs in a child process (worker.monitor); this process
    writes the outcome when the child could not: stopped, over a limit, or dead."""
    with session_scope() as session:
        attempt = jobstate.claim(session, job_id, worker_name())
        spec = session.scalar(select(Job.spec).where(Job.id == job_id)) if attempt else None
    if attempt is None:
        log.info("job %s is not claimable (taken, canceled or out of attempts); skipping", job_id)
        return None
    limits = Limits.of(settings, _requested_limits(spec))
    log.info("job %s: attempt %d started (%s)", job_id, attempt, limits)
    # Imported here once, not in every job's process (a no-op in the worker, which preloads).
    preload()
    workdir = Path(tempfile.mkdtemp(prefix=f"{job_id}-", dir=_jobs_dir(settings)))

    def work(stop: Event) -> None:
        _job_process(
            job_id,
            attempt,
            workdir,
            storage,
            should_stop=stop.is_set,
            max_total_bytes=4 * settings.max_upload_bytes,
        )

    try:
        watch = run_supervised(
            work, job_id=job_id, attempt=attempt, limits=limits, settings=settings
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return _record_outcome(job_id, attempt, watch, limits)


def _requested_limits(spec: dict[str, Any] | None) -> RequestedLimits:
    try:
        return RequestedLimits.model_validate((spec or {}).get("limits") or {})
    except ValidationError:  # the job's process fails the job on its invalid spec
        return RequestedLimits()


def _job_process(
    job_id: str,
    attempt: int,
    workdir: Path,
    storage: Storage,
    *,
    should_stop: Callable[[], bool],
    max_total_bytes: int,
) -> None:
    """The job's own process: runs the pipeline and writes the job's outcome, except when it
    is told to stop; then the supervising process writes why."""
    parent = os.getppid()
    reporter = _ProgressReporter(
        job_id, attempt, should_stop=lambda: should_stop() or os.getppid() != parent
    )
    try:
        _run(job_id, attempt, workdir, storage, reporter, max_total_bytes=max_total_bytes)
    except JobStopped:
        log.info("job %s: attempt %d stopped during %s", job_id, attempt, reporter.stage)
    except OptimizerError as exc:
        _finish_failed(job_id, attempt, JobStatus.failed, exc.type, exc.message)
    except StorageError as exc:
        _finish_failed(job_id, attempt, JobStatus.failed, "missing_input", str(exc))
    except Exception as exc:
        log.exception("job %s: unexpected error", job_id)
        _finish_failed(
            job_id,
            attempt,
            JobStatus.failed,
            "internal_error",
            f"{type(exc).__name__}: {exc} (a bug in modelpress; the traceback is in the "
            "worker log)",
        )


def _record_outcome(job_id: str, attempt: int, watch: Supervision, limits: Limits) -> str | None:
    """The job's final status after its process ended; writes it if the process did not."""
    with session_scope() as session:
        row = session.execute(
            select(Job.status, Job.stage, Job.attempts).where(Job.id == job_id)
        ).one_or_none()
    if row is None or row.attempts != attempt:
        log.warning("job %s: attempt %d lost the job to another attempt", job_id, attempt)
        return None
    # Written by the job's process (a heartbeat just after that also reads as `lost`).
    if row.status not in jobstate.RUNNING or watch.reason == StopReason.lost:
        return str(row.status)
    stage = row.stage or "loading"
    status, error_type, message = JobStatus.failed, "", ""
    if watch.reason == StopReason.canceled:
        status, error_type = JobStatus.canceled, "canceled"
        message = f"canceled by request during {stage}"
        if watch.killed:
            message += " (its process was stopped at once: it did not reach a progress report)"
    elif watch.reason == StopReason.memory_limit:
        error_type = "memory_limit"
        message = (
            f"the job used more than its memory limit of {limits.memory_mb} MB during {stage} "
            "and was stopped; raise `limits.memory_limit_mb` (up to the worker's "
            "MODELPRESS_JOB_MEMORY_LIMIT_MB) or use a smaller model, batch or dataset"
        )
    elif watch.reason == StopReason.time_limit:
        error_type = "time_limit"
        if watch.killed:
            message = (
                f"the job ran past its hard time limit of {limits.hard_time_s:g} s during "
                f"{stage} and was killed"
            )
        else:
            message = (
                f"the job ran past its time limit of {limits.soft_time_s:g} s and was "
                f"stopped during {stage}"
            )
    elif watch.exitcode < 0:
        error_type = "crashed"
        name = signal.Signals(-watch.exitcode).name
        message = f"the job's process was killed by {name} during {stage}"
        if -watch.exitcode == signal.SIGKILL:
            message += " (from outside the worker: the machine may have run out of memory)"
    else:
        error_type = "internal_error"
        message = (
            f"the job's process ended (exit code {watch.exitcode}) during {stage} without "
            "recording an outcome (a bug in modelpress; the worker log has the details)"
        )
    return _finish_failed(job_id, attempt, status, error_type, message)


def _jobs_dir(settings: Settings) -> Path:
    path = settings.tmp_dir / "jobs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _load_inputs(job_id: str) -> _Inputs:
    with session_scope() as session:
        job = session.get(Job, job_id)
        if job is None:
            raise StorageError(f"job {job_id} vanished")
        model = session.get(StoredModel, job.model_id) if job.model_id else None
        if model is None:
            raise StorageError("the job's model was deleted before the job ran")
        datasets = {
            d.id: d.storage_key
            for d in session.scalars(select(Dataset).where(Dataset.id.in_(job.dataset_ids)))
        }
        missing = set(job.dataset_ids) - set(datasets)
        if missing:
            raise StorageError(f"dataset(s) {sorted(missing)} were deleted before the job ran")
        spec = JobSpec.model_validate(job.spec)
        # Jobs created before the column existed name their extra models only in the spec.
        extra_ids = list(job.extra_model_ids or spec.model_ids())
        extra = {
            row.id: _stored(row)
            for row in session.scalars(select(StoredModel).where(StoredModel.id.in_(extra_ids)))
            if row.project_id == job.project_id
        }
        gone = sorted(set(extra_ids) - set(extra))
        if gone:
            raise StorageError(f"model(s) {gone} were deleted before the job ran")
        return _Inputs(
            project_id=job.project_id,
            spec=spec,
            model=_stored(model),
            dataset_keys=datasets,
            extra_models=extra,
        )


def _stored(row: StoredModel) -> _StoredModel:
    return _StoredModel(
        key=row.storage_key, format=row.format, info=ModelInfo.model_validate(row.info)
    )


def _run(
    job_id: str,
    attempt: int,
    workdir: Path,
    storage: Storage,
    reporter: _ProgressReporter,
    *,
    max_total_bytes: int,
) -> str:
    reporter("loading", 0.01, "fetching the model and datasets")
    inputs = _load_inputs(job_id)
    prefix = f"{inputs.project_id}/jobs/{job_id}/attempt-{attempt}"
    if attempt > 1:
        _drop_earlier_attempts(job_id, attempt, storage, keep=prefix)
    model_path, source, source_notes = _fetch_model(
        inputs.model, storage, workdir / "input", workdir / "model", max_total_bytes, reporter
    )
    extra_models: dict[str, Path] = {}
    for model_id, stored in inputs.extra_models.items():
        reporter("loading", 0.02, f"fetching model {model_id}")
        extra_models[model_id], _, notes = _fetch_model(
            stored,
            storage,
            workdir / "input" / model_id,
            workdir / "models" / model_id,
            max_total_bytes,
            reporter,
        )
        source_notes.extend(f"model {model_id}: {note}" for note in notes)
    dataset_paths = {
        dataset_id: storage.fetch_to(key, workdir / "input" / f"{dataset_id}.npz")
        for dataset_id, key in inputs.dataset_keys.items()
    }
    checkpoints_key = checkpoints_prefix(inputs.project_id, job_id)
    recorder = _StageRecorder(
        job_id=job_id,
        attempt=attempt,
        project_id=inputs.project_id,
        prefix=prefix,
        storage=storage,
        workdir=workdir / "stages",
    )
    outcome = run_pipeline(
        model_path=model_path,
        spec=inputs.spec,
        datasets=dataset_paths,
        workdir=workdir / "work",
        progress=reporter,
        models=extra_models,
        checkpoints=StorageCheckpoints(storage, checkpoints_key, scratch=workdir / "checkpoints"),
        on_stage=recorder,
    )
    reporter("storing", 0.98, "storing artifacts")
    result: dict[str, Any] = {
        "metrics": outcome.metrics,
        "notes": [*source_notes, *outcome.notes],
        "passes": outcome.passes,
        "stages": outcome.stages,
        "source": source,
    }
    report_path = workdir / "report.json"
    report_path.write_text(
        json.dumps(
            {"job_id": job_id, "spec": inputs.spec.model_dump(mode="json"), **result},
            indent=2,
            allow_nan=False,
        )
    )
    # Each pass's stage model and reports were stored as the pass finished (_StageRecorder).
    files = [
        ("model", *_model_artifact(outcome.model_path, workdir / "package")),
        ("report", "report.json", "application/json", report_path),
    ]
    artifacts = [
        _store(storage, project_id=inputs.project_id, job_id=job_id, prefix=prefix, file=file)
        for file in files
    ]
    with session_scope() as session:
        session.add_all(artifacts)
        session.flush()
        if not jobstate.finish(session, job_id, attempt, status=JobStatus.succeeded, result=result):
            session.rollback()
            storage.delete_prefix(prefix)
            log.warning("job %s: attempt %d finished but no longer owns the job", job_id, attempt)
            return JobStatus.canceled
    # Training state is needed only to resume an unfinished job.
    storage.delete_prefix(checkpoints_key)
    log.info("job %s: succeeded", job_id)
    return JobStatus.succeeded


def _fetch_model(
    stored: _StoredModel,
    storage: Storage,
    input_dir: Path,
    workdir: Path,
    max_total_bytes: int,
    reporter: _ProgressReporter,
) -> tuple[Path, dict[str, Any], list[str]]:
    stored_path = storage.fetch_to(stored.key, input_dir / PurePosixPath(stored.key).name)
    return _prepare_model(
        stored, stored_path, workdir, max_total_bytes=max_total_bytes, reporter=reporter
    )


def _store(
    storage: Storage,
    *,
    project_id: str,
    job_id: str,
    prefix: str,
    file: tuple[str, str, str, Path],
) -> Artifact:
    """Put one file in storage (moving it there) and return its artifact row."""
    kind, name, content_type, path = file
    row = Artifact(
        id=new_id("art"),
        project_id=project_id,
        job_id=job_id,
        kind=kind,
        name=name,
        content_type=content_type,
        sha256=_sha256(path),
        size_bytes=path.stat().st_size,
        storage_key=f"{prefix}/{name}",
    )
    storage.put_file(row.storage_key, path)
    return row


class _StageRecorder:
    """The pipeline's on_stage callback: stores each finished pass's model and reports as
    artifacts and the stages measured so far as the job's result, at once, so that they stay
    with the job when a later pass fails."""

    def __init__(
        self,
        *,
        job_id: str,
        attempt: int,
        project_id: str,
        prefix: str,
        storage: Storage,
        workdir: Path,
    ) -> None:
        self.job_id = job_id
        self.attempt = attempt
        self.project_id = project_id
        self.prefix = prefix
        self.storage = storage
        self.workdir = workdir
        self.stages: list[dict[str, Any]] = []

    def __call__(self, stage: dict[str, Any], files: ArtifactFiles) -> None:
        scratch = self.workdir / f"pass{stage['pass']}"
        scratch.mkdir(parents=True, exist_ok=True)
        rows: list[Artifact] = []
        for kind, name, path in files:
            if kind == "stage_model":
                stem = PurePosixPath(name).stem
                packaged, content_type, source = _model_artifact(path, scratch, stem=stem)
                if packaged != name:  # the pipeline and the packaging disagree: a bug
                    raise RuntimeError(f"stage model packaged as {packaged}, expected {name}")
            else:
                content_type, source = _content_type(path), path
            # Storing moves the file, and later passes still read the stage's model.
            staged = _link_or_copy(source, scratch / f"{name}.upload")
            rows.append(
                _store(
                    self.storage,
                    project_id=self.project_id,
                    job_id=self.job_id,
                    prefix=self.prefix,
                    file=(kind, name, content_type, staged),
                )
            )
        self.stages.append(stage)
        with session_scope() as session:
            session.add_all(rows)
            session.flush()
            if not jobstate.record_result(
                session, self.job_id, self.attempt, result={"stages": self.stages}
            ):
                session.rollback()
                for row in rows:
                    self.storage.delete_prefix(row.storage_key)
                raise JobStopped()


def _drop_earlier_attempts(job_id: str, attempt: int, storage: Storage, *, keep: str) -> None:
    """A retried job starts over: what earlier attempts stored (stage models of the passes
    they finished) is replaced by this attempt's. Checkpoints are kept: they let it resume."""
    with session_scope() as session:
        rows = session.scalars(select(Artifact).where(Artifact.job_id == job_id)).all()
        stale = [row for row in rows if not row.storage_key.startswith(f"{keep}/")]
        for row in stale:
            session.delete(row)
        keys = [row.storage_key for row in stale]
    for key in keys:
        storage.delete_prefix(key)
    if keys:
        log.info(
            "job %s: attempt %d dropped %d artifact(s) of earlier attempts",
            job_id,
            attempt,
            len(keys),
        )


def _link_or_copy(source: Path, dest: Path) -> Path:
    dest.unlink(missing_ok=True)
    try:
        os.link(source, dest)
    except OSError:
        shutil.copyfile(source, dest)
    return dest


def _prepare_model(
    stored: _StoredModel,
    stored_path: Path,
    workdir: Path,
    *,
    max_total_bytes: int,
    reporter: _ProgressReporter,
) -> tuple[Path, dict[str, Any], list[str]]:
    """The ONNX model the pipeline runs on, what it came from, and notes for the result."""
    model_format = stored.format
    if model_format == UploadFormat.onnx:
        return stored_path, {"format": model_format, "converted": False}, []
    if model_format == UploadFormat.onnx_zip:
        reporter("loading", 0.02, "extracting the model and its external data")
        path = extract_onnx_zip(stored_path, workdir, max_total_bytes=max_total_bytes)
        return path, {"format": model_format, "converted": False}, []
    if model_format in (UploadFormat.torch_export, UploadFormat.torchscript):
        from optimizers.torch_export import convert_to_onnx

        reporter("loading", 0.02, f"converting the {model_format} program to ONNX")
        conversion = convert_to_onnx(
            stored_path, stored.info, workdir, max_total_bytes=max_total_bytes
        )
        return conversion.model_path, conversion.source, conversion.notes
    raise InvalidModelError(f"the model has an unknown format '{model_format}'")


def _model_artifact(
    model_path: Path, workdir: Path, *, stem: str = "optimized"
) -> tuple[str, str, Path]:
    """(name, content type, path) of a model to keep: the .onnx file, or a zip of it and its
    external data files when its weights live beside it."""
    proto = onnx.load(str(model_path), load_external_data=False)
    locations = sorted(external_data_locations(proto))
    del proto
    if not locations:
        return f"{stem}.onnx", "application/octet-stream", model_path
    workdir.mkdir(parents=True, exist_ok=True)
    package = workdir / f"{stem}.zip"
    onnx_name = f"{stem}.onnx" if f"{stem}.onnx" not in locations else model_path.name
    with zipfile.ZipFile(package, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        archive.write(model_path, arcname=onnx_name)
        for location in locations:
            check_relative_location(location, what="the external data location")
            archive.write(model_path.parent / location, arcname=location)
    return package.name, "application/zip", package


def _finish_failed(
    job_id: str, attempt: int, status: JobStatus, error_type: str, message: str
) -> str:
    with session_scope() as session:
        jobstate.finish(
            session, job_id, attempt, status=status, error_type=error_type, error_message=message
        )
    log.info("job %s: %s (%s: %s)", job_id, status, error_type, message)
    return status


def _content_type(path: Path) -> str:
    return "application/json" if path.suffix == ".json" else "application/octet-stream"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class _ProgressReporter:
    """The pipeline's progress callback: writes progress, and stops a job that must stop."""

    def __init__(self, job_id: str, attempt: int, *, should_stop: Callable[[], bool]) -> None:
        self.job_id = job_id
        self.attempt = attempt
        self.should_stop = should_stop
        self.stage = "loading"
        self._last_write = 0.0

    def __call__(self, stage: str, fraction: float, message: str) -> None:
        if self.should_stop():
            raise JobStopped()
        now = time.monotonic()
        if stage == self.stage and now - self._last_write < _PROGRESS_MIN_INTERVAL_S:
            return
        self.stage = stage
        self._last_write = now
        with session_scope() as session:
            owned = jobstate.report_progress(
                session, self.job_id, self.attempt, stage=stage, progress=fraction, message=message
            )
        if not owned:  # finished or re-queued by someone else: this attempt has no say
            raise JobStopped()
