"""Runs one job: claim it, fetch its inputs into the confined job process's scratch folder,
watch that process, store the artifacts and numbers it reports, and write the outcome.

Only this (pool) process touches the database and storage; the job process gets files in
its scratch folder and talks through a pipe (worker.protocol, worker.jobproc).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from core import autosearch, jobstate
from core.db import new_id, session_scope
from core.jobspec import JobLimits as RequestedLimits
from core.jobspec import JobSpec, load_stored_spec
from core.logs import job_context
from core.metrics import observe_job, observe_pass, observe_queue_wait
from core.sandbox import SandboxUnavailable
from core.settings import Settings
from core.storage import Storage, StorageCheckpoints, StorageError
from core.storage_keys import artifact_key, attempt_prefix, checkpoints_prefix
from core.tables import FINAL_STATUSES, Artifact, Dataset, Job, JobStatus, StoredModel
from optimizers.config import PipelineSpec
from optimizers.errors import OptimizerError
from optimizers.results import ModelInfo
from worker.calibration import KeptCalibrations, calibrates
from worker.dbretry import UNREACHABLE, retrying
from worker.monitor import Limits, StopReason, Supervision, supervise, worker_name
from worker.presence import current_worker_id
from worker.protocol import (
    FILE_SIZE_LIMIT,
    INTERNAL_ERROR,
    LOG_FILE,
    MEMORY_LIMIT,
    REQUEST_FILE,
    ProtocolError,
    check_relative,
)
from worker.provenance import FileDigest, ProducedFile, build_manifest
from worker.sandbox import JobHost, JobProcess, KernelLimits, job_host, kernel_limits

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Progress writes are throttled; a stage change is always written.
_PROGRESS_MIN_INTERVAL_S = 0.5
_ARTIFACT_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,120}$")
_ARTIFACT_KIND = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
_CONTENT_TYPES = {"application/octet-stream", "application/zip", "application/json"}
_FINAL_MODELS = {"optimized.onnx": "application/octet-stream", "optimized.zip": "application/zip"}
_RESULT_KEYS = ("metrics", "notes", "passes", "stages", "source")
#: A pass kind or method as a metric label: what the registry names, nothing else.
_LABEL_VALUE = re.compile(r"[a-z0-9_:]{0,40}")


def _optimizer_error_types() -> set[str]:
    found: set[str] = set()
    pending: list[type[OptimizerError]] = [OptimizerError]
    while pending:
        cls = pending.pop()
        found.add(cls.type)
        pending.extend(cls.__subclasses__())
    return found


@dataclass
class _StoredModel:
    id: str
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


def execute_job(job_id: str, *, settings: Settings, storage: Storage) -> str | None:
    """Returns the job's final status, or None when this worker did not get the job (or lost
    it to another attempt). A worker whose job sandbox cannot start leaves the job queued."""
    with job_context(job_id):
        status = _execute(job_id, settings=settings, storage=storage)
        if status in FINAL_STATUSES:
            _after_trial(job_id, status=str(status), settings=settings, storage=storage)
        return status


def _after_trial(job_id: str, *, status: str, settings: Settings, storage: Storage) -> None:
    """A trial of an auto search ended: its result becomes reusable (its cache key) and its
    search takes its next step now rather than at the next reaper pass."""
    try:
        with session_scope() as session:
            parent_id = session.scalar(select(Job.parent_id).where(Job.id == job_id))
            if parent_id is not None and status == JobStatus.succeeded:
                autosearch.stamp_trial(session, job_id, worker_id=current_worker_id())
        if parent_id is not None:
            autosearch.advance(parent_id, settings=settings, storage=storage)
    except Exception:
        log.warning(
            "job %s: its search's next step failed; the reaper retries", job_id, exc_info=True
        )


def _execute(job_id: str, *, settings: Settings, storage: Storage) -> str | None:
    try:
        host = job_host(settings)
        host.wait_ready()
    except SandboxUnavailable as exc:
        log.error(
            "job %s left queued: this worker cannot confine jobs (%s); see docs/security.md",
            job_id,
            exc,
        )
        return None

    def claim(session: Session) -> tuple[int | None, Any]:
        attempt = jobstate.claim(session, job_id, worker_name(), worker_id=current_worker_id())
        if not attempt:
            return None, None
        return attempt, session.execute(
            select(Job.spec, Job.queue, Job.queued_at, Job.started_at).where(Job.id == job_id)
        ).one()

    attempt, claimed = retrying(
        claim, patience_s=settings.heartbeat_timeout_s, what=f"job {job_id}"
    )
    if attempt is None:
        log.info("job %s is not claimable (taken, canceled or out of attempts); skipping", job_id)
        return None
    began = time.monotonic()
    spec, queue = claimed.spec, claimed.queue
    if claimed.queued_at is not None and claimed.started_at is not None:
        wait = (claimed.started_at - claimed.queued_at).total_seconds()
        observe_queue_wait(queue=queue, seconds=wait)
    limits = Limits.of(settings, _requested_limits(spec))
    log.info("job %s: attempt %d started (%s)", job_id, attempt, limits)
    staging = Path(tempfile.mkdtemp(prefix=f"{job_id}-", dir=_jobs_dir(settings)))
    run = _JobRun(
        job_id=job_id,
        attempt=attempt,
        settings=settings,
        storage=storage,
        host=host,
        staging=staging,
        limits=limits,
        kernel=kernel_limits(settings, memory_mb=limits.memory_mb, hard_time_s=limits.hard_time_s),
    )
    status = None
    try:
        status = run.execute()
        return status
    finally:
        host.scratch.empty()
        shutil.rmtree(staging, ignore_errors=True)
        if status in FINAL_STATUSES:
            _observe_outcome(run, spec, queue=queue, status=str(status), began=began)


def _observe_outcome(run: _JobRun, spec: Any, *, queue: str, status: str, began: float) -> None:
    observe_job(
        queue=queue,
        status=status,
        passes=_pass_kinds(run, spec),
        seconds=time.monotonic() - began,
    )
    for entry in run.passes:
        if isinstance(entry, dict) and isinstance(entry.get("duration_s"), int | float):
            observe_pass(
                kind=_label(entry.get("kind")),
                method=_label(entry.get("method")),
                seconds=float(entry["duration_s"]),
            )


def _pass_kinds(run: _JobRun, spec: Any) -> str:
    """The kinds of passes the job runs, sorted and joined by '+' (`prune+quantize`): a label
    with few values, however long a job's chain of passes."""
    if run.inputs is not None:
        kinds = {config.kind for config in run.inputs.spec.passes}
    else:  # its spec could not be loaded
        passes = spec.get("passes") if isinstance(spec, dict) else None
        kinds = {_label(p.get("kind")) for p in passes or [] if isinstance(p, dict)}
    return "+".join(sorted(kinds)) or "none"


def _label(value: Any) -> str:
    text = str(value) if value is not None else ""
    return text if _LABEL_VALUE.fullmatch(text) else "other"


def _requested_limits(spec: dict[str, Any] | None) -> RequestedLimits:
    try:
        return RequestedLimits.model_validate((spec or {}).get("limits") or {})
    except ValidationError:  # the job fails on its invalid spec when it loads its inputs
        return RequestedLimits()


def _jobs_dir(settings: Settings) -> Path:
    path = settings.job_staging_dir
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass
class _JobRun:
    """One attempt of one job, as the pool process runs it."""

    job_id: str
    attempt: int
    settings: Settings
    storage: Storage
    host: JobHost
    staging: Path
    limits: Limits
    kernel: KernelLimits
    stage: str = "loading"
    inputs: _Inputs | None = None
    prefix: str = ""
    process: JobProcess | None = None
    stages: list[dict[str, Any]] = field(default_factory=list)
    outcome: dict[str, Any] | None = None
    #: The passes of a succeeded job as its result lists them (kind, method, duration_s).
    passes: list[Any] = field(default_factory=list)
    protocol_error: str | None = None
    #: What the job read, by storage key: the bytes fetched for it, hashed as fetched.
    read: dict[str, FileDigest] = field(default_factory=dict)
    #: What this attempt stored for its finished passes, with the number of each one's pass.
    stage_artifacts: list[tuple[int | None, Artifact]] = field(default_factory=list)
    #: The model's kept calibrations, for a job that calibrates.
    calibrations: KeptCalibrations | None = None
    _last_progress: float = 0.0
    _staged: int = 0

    def execute(self) -> str | None:
        try:
            self._progress("loading", 0.01, "fetching the model and datasets")
            self.inputs = self._db(lambda session: _load_inputs(session, self.job_id), "inputs")
            self.prefix = attempt_prefix(self.inputs.project_id, self.job_id, self.attempt)
            if self.attempt > 1:
                keys = self._db(
                    lambda session: _drop_earlier_attempts(session, self.job_id, keep=self.prefix),
                    "earlier attempts",
                )
                for key in keys:
                    self.storage.delete_prefix(key)
            self.host.scratch.empty()
            self._write_request(self.inputs)
        except StorageError as exc:
            return self._fail(JobStatus.failed, "missing_input", str(exc))
        except Exception as exc:
            log.exception("job %s: unexpected error", self.job_id)
            return self._fail_bug(f"{type(exc).__name__}: {exc}")
        try:
            self.process = self.host.start_job(self.kernel)
        except SandboxUnavailable as exc:
            log.error("job %s: the job sandbox failed: %s", self.job_id, exc)
            self.host.stop()
            return self._fail(
                JobStatus.failed,
                "crashed",
                f"the job's sandbox failed before the job started ({exc})",
            )
        try:
            watch = supervise(
                self.process,
                on_message=self._on_message,
                job_id=self.job_id,
                attempt=self.attempt,
                limits=self.limits,
                settings=self.settings,
            )
        except Exception as exc:
            log.exception("job %s: unexpected error", self.job_id)
            return self._fail_bug(f"{type(exc).__name__}: {exc}")
        finally:
            self.process.close()
        self._keep_calibrations()
        return self._record_outcome(watch)

    # --- before the job process starts -------------------------------------------------

    def _write_request(self, inputs: _Inputs) -> None:
        max_total_bytes = 4 * self.settings.max_upload_bytes
        request = {
            "job_id": self.job_id,
            # What the pipeline runs on: the job spec less what only the service reads.
            "spec": inputs.spec.model_dump(mode="json", include=set(PipelineSpec.model_fields)),
            "model": self._fetch_model(inputs.model, "input"),
            "extra_models": {
                model_id: self._fetch_model(stored, f"input/models/{model_id}")
                for model_id, stored in inputs.extra_models.items()
            },
            "datasets": {
                dataset_id: self._fetch(key, f"input/datasets/{dataset_id}.npz")
                for dataset_id, key in inputs.dataset_keys.items()
            },
            "max_total_bytes": max_total_bytes,
        }
        request |= self._stage_calibrations(inputs)
        self.host.scratch.write_bytes(REQUEST_FILE, json.dumps(request).encode())

    def _stage_calibrations(self, inputs: _Inputs) -> dict[str, Any]:
        """For a job that calibrates: its model's kept calibrations on its datasets, copied
        in (while the job runs its model cannot be deleted, so neither can they)."""
        if not calibrates(inputs.spec):
            return {}
        self.calibrations = KeptCalibrations(
            storage=self.storage,
            scratch=self.host.scratch,
            project_id=inputs.project_id,
            model_id=inputs.model.id,
            dataset_sha256={
                dataset_id: self.read[key].sha256 for dataset_id, key in inputs.dataset_keys.items()
            },
            staging_path=self._staging_path,
        )
        return self.calibrations.stage()

    def _keep_calibrations(self) -> None:
        """Before the outcome is written (the model is still in use): a failed or canceled
        job's calibrations are as good as a succeeded one's."""
        if self.calibrations is None:
            return
        try:
            kept = self.calibrations.keep()
        except Exception:  # a bug here must not keep the job from its outcome
            log.exception("job %s: its calibrations were not kept", self.job_id)
            return
        if kept:
            log.info("job %s: kept %d calibration(s) of its model", self.job_id, len(kept))

    def _fetch_model(self, stored: _StoredModel, folder: str) -> dict[str, Any]:
        path = self._fetch(stored.key, f"{folder}/{PurePosixPath(stored.key).name}")
        return {"path": path, "format": stored.format, "info": stored.info.model_dump()}

    def _fetch(self, key: str, relative: str) -> str:
        """A copy of a stored object in the scratch folder (never a link: the job could
        change a linked file, and with it the stored object)."""
        staged = self.storage.fetch_to(key, self._staging_path())
        self.read[key] = FileDigest(sha256=_sha256(staged), size_bytes=staged.stat().st_size)
        try:
            self.host.scratch.copy_in(check_relative(relative), staged)
        finally:
            staged.unlink(missing_ok=True)
        return relative

    def _staging_path(self) -> Path:
        self._staged += 1
        return self.staging / f"file-{self._staged}"

    # --- while it runs -------------------------------------------------------------------

    def _on_message(self, message: dict[str, Any]) -> StopReason | None:
        try:
            return self._handle(message)
        except (ProtocolError, KeyError, TypeError, ValueError) as exc:
            self.protocol_error = f"{type(exc).__name__}: {exc}"[:500]
            log.warning("job %s: invalid message from the job process: %s", self.job_id, exc)
            return StopReason.protocol

    def _handle(self, message: dict[str, Any]) -> StopReason | None:
        kind = message["type"]
        if kind == "progress":
            stage = str(message["stage"])[:40]
            return self._progress(stage, float(message["fraction"]), str(message["message"]))
        if kind == "stage":
            return self._store_stage(message["stage"], message["files"])
        if kind == "checkpoint_save":
            self._checkpoints().save(_checkpoint_name(message), self._copy_out(message["path"]))
            return None
        if kind == "checkpoint_load":
            path = check_relative(message["path"])
            loaded = self._checkpoints().load(_checkpoint_name(message), self._staging_path())
            if loaded is not None:
                self.host.scratch.copy_in(path, loaded)
                loaded.unlink(missing_ok=True)
            assert self.process is not None
            self.process.send({"type": "checkpoint_loaded", "found": loaded is not None})
            return None
        if kind in ("result", "error", "stopped"):
            self.outcome = message
            return None
        raise ProtocolError(f"unknown message type {kind[:40]!r}")

    def _progress(self, stage: str, fraction: float, message: str) -> StopReason | None:
        now = time.monotonic()
        if stage == self.stage and now - self._last_progress < _PROGRESS_MIN_INTERVAL_S:
            return None
        self.stage = stage
        self._last_progress = now
        try:
            owned = retrying(
                lambda session: jobstate.report_progress(
                    session,
                    self.job_id,
                    self.attempt,
                    stage=stage,
                    progress=fraction,
                    message=message,
                ),
                # Not long: the job goes on meanwhile, and its next report is newer.
                patience_s=2 * self.settings.heartbeat_interval_s,
                what=f"job {self.job_id}: progress",
            )
        except UNREACHABLE:
            log.warning("job %s: progress not written; the next report writes", self.job_id)
            return None
        return None if owned else StopReason.lost

    def _checkpoints(self) -> StorageCheckpoints:
        assert self.inputs is not None
        return StorageCheckpoints(
            self.storage,
            checkpoints_prefix(self.inputs.project_id, self.job_id),
            scratch=self.staging / "checkpoints",
        )

    def _copy_out(self, relative: str) -> Path:
        dest = self._staging_path()
        self.host.scratch.copy_out(relative, dest)
        return dest

    def _store_stage(self, stage: dict[str, Any], files: list[dict[str, Any]]) -> StopReason | None:
        if not isinstance(stage, dict) or not isinstance(files, list) or len(files) > 32:
            raise ProtocolError("a stage message without a stage and its files")
        json.dumps(stage, allow_nan=False)
        rows = [self._store(entry) for entry in files]
        self.stages.append(stage)

        def record(session: Session) -> bool:
            session.add_all([_copy(row) for row in rows])
            session.flush()
            if jobstate.record_result(
                session, self.job_id, self.attempt, result={"stages": self.stages}
            ):
                return True
            session.rollback()
            return False

        if not self._db(record, "stage"):
            for row in rows:
                self.storage.delete_prefix(row.storage_key)
            return StopReason.lost
        number = stage.get("pass")
        self.stage_artifacts.extend((number if isinstance(number, int) else None, r) for r in rows)
        return None

    def _store(self, entry: dict[str, Any], *, kind: str | None = None) -> Artifact:
        """Put one file the job reported in storage and return its artifact row."""
        assert self.inputs is not None
        kind = kind or str(entry["kind"])
        name, content_type = str(entry["name"]), str(entry["content_type"])
        if not _ARTIFACT_KIND.match(kind) or not _ARTIFACT_NAME.match(name) or ".." in name:
            raise ProtocolError(f"invalid artifact {kind[:40]!r} {name[:200]!r}")
        if content_type not in _CONTENT_TYPES:
            raise ProtocolError(f"invalid content type {content_type[:100]!r}")
        dest = self._staging_path()
        sha256 = self.host.scratch.copy_out(entry["path"], dest)
        return _store_file(
            self.storage,
            project_id=self.inputs.project_id,
            job_id=self.job_id,
            key=artifact_key(self.prefix, name),
            kind=kind,
            name=name,
            content_type=content_type,
            path=dest,
            sha256=sha256,
        )

    # --- after it ended ------------------------------------------------------------------

    def _record_outcome(self, watch: Supervision) -> str | None:
        """Writes the job's final state from what its process reported and how it ended."""
        row = self._db(
            lambda session: session.execute(
                select(Job.status, Job.attempts).where(Job.id == self.job_id)
            ).one_or_none(),
            "state",
        )
        if row is None or row.attempts != self.attempt or watch.reason == StopReason.lost:
            log.warning(
                "job %s: attempt %d lost the job to another attempt", self.job_id, self.attempt
            )
            return None
        if row.status not in jobstate.RUNNING:
            return str(row.status)
        outcome = self.outcome or {}
        if self.protocol_error is not None:
            return self._fail(
                JobStatus.failed,
                "crashed",
                f"the job's process sent an invalid message during {self.stage} and was "
                f"stopped ({self.protocol_error})",
            )
        if outcome.get("type") == "result" and not watch.killed:
            try:
                return self._succeed(outcome)
            except ProtocolError as exc:
                return self._fail(
                    JobStatus.failed,
                    "crashed",
                    f"the job's process reported an invalid result ({exc})",
                )
        if outcome.get("type") == "error" and not watch.killed:
            return self._fail_reported(outcome)
        return self._fail_stopped(watch)

    def _succeed(self, outcome: dict[str, Any]) -> str:
        assert self.inputs is not None
        reported = outcome["result"]
        if not isinstance(reported, dict):
            raise ProtocolError("the result is not an object")
        result = {key: reported.get(key) for key in _RESULT_KEYS}
        model = outcome["model"]
        name = str(model["name"])
        if _FINAL_MODELS.get(name) != model["content_type"]:
            raise ProtocolError(f"unexpected model artifact {name[:100]!r}")
        report_path = self._staging_path()
        report_path.write_text(
            json.dumps(
                {
                    "job_id": self.job_id,
                    "spec": self.inputs.spec.model_dump(mode="json"),
                    **result,
                },
                indent=2,
                allow_nan=False,
            )
        )
        artifacts = [
            self._store(model, kind="model"),
            _store_file(
                self.storage,
                project_id=self.inputs.project_id,
                job_id=self.job_id,
                key=artifact_key(self.prefix, "report.json"),
                kind="report",
                name="report.json",
                content_type="application/json",
                path=report_path,
                sha256=_sha256(report_path),
            ),
        ]
        artifacts.append(self._store_provenance(artifacts, result))

        def record(session: Session) -> bool:
            session.add_all([_copy(row) for row in artifacts])
            session.flush()
            if jobstate.finish(
                session, self.job_id, self.attempt, status=JobStatus.succeeded, result=result
            ):
                return True
            session.rollback()
            return False

        if not self._db(record, "result"):
            self.storage.delete_prefix(self.prefix)
            log.warning(
                "job %s: attempt %d finished but no longer owns the job",
                self.job_id,
                self.attempt,
            )
            return JobStatus.canceled
        # Training state is needed only to resume an unfinished job.
        self.storage.delete_prefix(checkpoints_prefix(self.inputs.project_id, self.job_id))
        self.passes = list(result.get("passes") or [])
        log.info("job %s: succeeded", self.job_id)
        return JobStatus.succeeded

    def _store_provenance(self, produced: list[Artifact], result: dict[str, Any]) -> Artifact:
        assert self.inputs is not None
        inputs = self.inputs
        metrics = result.get("metrics")
        environment = metrics.get("environment") if isinstance(metrics, dict) else None
        manifest = build_manifest(
            job_id=self.job_id,
            attempt=self.attempt,
            spec=inputs.spec.model_dump(mode="json"),
            model=self.read[inputs.model.key],
            model_format=inputs.model.format,
            extra_models={
                model_id: self.read[stored.key] for model_id, stored in inputs.extra_models.items()
            },
            datasets={
                dataset_id: self.read[key] for dataset_id, key in inputs.dataset_keys.items()
            },
            produced=[
                ProducedFile(
                    kind=row.kind,
                    name=row.name,
                    content_type=row.content_type,
                    sha256=row.sha256,
                    size_bytes=row.size_bytes,
                    stage=stage,
                )
                for stage, row in [*self.stage_artifacts, *((None, row) for row in produced)]
            ],
            environment=environment if isinstance(environment, dict) else None,
            worker={"name": worker_name(), "id": current_worker_id()},
        )
        path = self._staging_path()
        path.write_text(json.dumps(manifest, indent=2, allow_nan=False))
        return _store_file(
            self.storage,
            project_id=inputs.project_id,
            job_id=self.job_id,
            key=artifact_key(self.prefix, "provenance.json"),
            kind="provenance",
            name="provenance.json",
            content_type="application/json",
            path=path,
            sha256=_sha256(path),
        )

    def _fail_reported(self, outcome: dict[str, Any]) -> str:
        error_type = str(outcome.get("error_type"))
        message = str(outcome.get("message"))[:2000]
        if error_type == MEMORY_LIMIT:
            return self._fail(JobStatus.failed, MEMORY_LIMIT, self._memory_message())
        if error_type == FILE_SIZE_LIMIT:
            return self._fail(
                JobStatus.failed,
                FILE_SIZE_LIMIT,
                f"the job wrote a file larger than its limit of "
                f"{self.kernel.file_bytes // (1024 * 1024)} MB during {self.stage} and was "
                "stopped",
            )
        if error_type in _optimizer_error_types():
            return self._fail(JobStatus.failed, error_type, message)
        log.error(
            "job %s: unexpected error in the job process: %s\n%s",
            self.job_id,
            message,
            str(outcome.get("traceback", ""))[-8000:],
        )
        return self._fail_bug(message)

    def _memory_message(self) -> str:
        return (
            f"the job used more than its memory limit of {self.kernel.memory_mb} MB during "
            f"{self.stage} and was stopped; raise `limits.memory_limit_mb` (up to the worker's "
            "MODELPRESS_JOB_MEMORY_LIMIT_MB) or use a smaller model, batch or dataset"
        )

    def _fail_stopped(self, watch: Supervision) -> str:
        """The job's process was stopped, or ended without saying how its job went."""
        stage, limits = self.stage, self.limits
        status, error_type, message = JobStatus.failed, "", ""
        if watch.reason == StopReason.canceled:
            status, error_type = JobStatus.canceled, "canceled"
            message = f"canceled by request during {stage}"
            if watch.killed:
                message += " (its process was stopped at once: it did not reach a progress report)"
        elif watch.reason == StopReason.memory_limit:
            error_type, message = MEMORY_LIMIT, self._memory_message()
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
        elif watch.exitcode == -signal.SIGXCPU:
            error_type = "time_limit"
            message = (
                f"the job used more than its CPU time limit of {self.kernel.cpu_s} s during "
                f"{stage} and was stopped"
            )
        elif watch.exitcode < 0:
            error_type = "crashed"
            name = signal.Signals(-watch.exitcode).name
            message = f"the job's process was killed by {name} during {stage}"
            if -watch.exitcode == signal.SIGKILL:
                message += " (from outside the worker: the machine may have run out of memory)"
        else:
            error_type = INTERNAL_ERROR
            tail = self.host.scratch.read_tail(LOG_FILE)
            log.error(
                "job %s: its process ended (exit code %d) without an outcome; its output:\n%s",
                self.job_id,
                watch.exitcode,
                tail,
            )
            message = (
                f"the job's process ended (exit code {watch.exitcode}) during {stage} without "
                "recording an outcome (a bug in modelpress; the worker log has the details)"
            )
        return self._fail(status, error_type, message)

    def _fail_bug(self, message: str) -> str:
        """Fails the job for an error that is modelpress's own, logged with its traceback."""
        return self._fail(
            JobStatus.failed,
            INTERNAL_ERROR,
            f"{message} (a bug in modelpress; the traceback is in the worker log)",
        )

    def _fail(self, status: JobStatus, error_type: str, message: str) -> str:
        self._db(
            lambda session: jobstate.finish(
                session,
                self.job_id,
                self.attempt,
                status=status,
                error_type=error_type,
                error_message=message,
            ),
            "outcome",
        )
        log.info("job %s: %s (%s: %s)", self.job_id, status, error_type, message)
        return status

    def _db(self, work: Callable[[Session], T], what: str) -> T:
        return retrying(
            work,
            patience_s=self.settings.heartbeat_timeout_s,
            what=f"job {self.job_id}: {what}",
        )


def _checkpoint_name(message: dict[str, Any]) -> str:
    name = str(message["name"])
    if not all(_ARTIFACT_NAME.match(part) for part in name.split("/")) or len(name) > 200:
        raise ProtocolError(f"invalid checkpoint name {name[:200]!r}")
    return name


def _load_inputs(session: Session, job_id: str) -> _Inputs:
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
    spec = load_stored_spec(job.spec)
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
        id=row.id, key=row.storage_key, format=row.format, info=ModelInfo.model_validate(row.info)
    )


def _store_file(
    storage: Storage,
    *,
    project_id: str,
    job_id: str,
    key: str,
    kind: str,
    name: str,
    content_type: str,
    path: Path,
    sha256: str,
) -> Artifact:
    """Put one file in storage (moving it there) and return its artifact row."""
    row = Artifact(
        id=new_id("art"),
        project_id=project_id,
        job_id=job_id,
        kind=kind,
        name=name,
        content_type=content_type,
        sha256=sha256,
        size_bytes=path.stat().st_size,
        storage_key=key,
    )
    storage.put_file(row.storage_key, path)
    return row


def _drop_earlier_attempts(session: Session, job_id: str, *, keep: str) -> list[str]:
    """A retried job starts over: what earlier attempts stored (stage models of the passes
    they finished) is replaced by this attempt's. Checkpoints are kept: they let it resume.
    Returns the storage keys to delete once the rows are gone."""
    rows = session.scalars(select(Artifact).where(Artifact.job_id == job_id)).all()
    stale = [row for row in rows if not row.storage_key.startswith(f"{keep}/")]
    for row in stale:
        session.delete(row)
    if stale:
        log.info("job %s: dropping %d artifact(s) of earlier attempts", job_id, len(stale))
    return [row.storage_key for row in stale]


def _copy(row: Artifact) -> Artifact:
    """A fresh row with the same values: a retried transaction adds rows anew."""
    return Artifact(
        id=row.id,
        project_id=row.project_id,
        job_id=row.job_id,
        kind=row.kind,
        name=row.name,
        content_type=row.content_type,
        sha256=row.sha256,
        size_bytes=row.size_bytes,
        storage_key=row.storage_key,
    )


def _sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
