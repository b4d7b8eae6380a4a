"""The confined job process: loads, converts and optimizes one uploaded model in its scratch
folder, and tells the pool process what happens through a pipe (worker.protocol). It holds
no credential and reaches no database or storage: the pool process fetched its inputs into
the scratch folder, and stores what it reports.

Messages it sends: `progress`, `stage` (a pass finished: its numbers and files),
`checkpoint_save` / `checkpoint_load` (training state kept across attempts), then one of
`result`, `error` or `stopped`. It reads `stop` and checkpoint replies on the control pipe.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import time
import traceback
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import onnx

from optimizers.config import PipelineSpec
from optimizers.errors import InvalidModelError, OptimizerError
from optimizers.external_data import check_relative_location, external_data_locations
from optimizers.formats.to_onnx import to_onnx
from optimizers.measure.runtime import default_threads
from optimizers.pipeline import ArtifactFiles, run_pipeline
from optimizers.results import ProgressFn
from worker.protocol import (
    FILE_SIZE_LIMIT,
    INTERNAL_ERROR,
    MEMORY_LIMIT,
    REQUEST_FILE,
    LineReader,
    ProtocolError,
    check_relative,
    wait_readable,
    write_message,
)

#: Progress messages are throttled; a stage change is always sent.
_PROGRESS_MIN_INTERVAL_S = 0.5
#: How allocators say that they got no memory (the kernel's limit refused it).
_OUT_OF_MEMORY_TEXTS = (
    "can't allocate memory",
    "cannot allocate memory",
    "failed to allocate memory",
    "bad_alloc",
    "out of memory",
)


class JobStopped(Exception):
    """The pool process asked the job to stop (canceled or over its soft time limit)."""


class Channel:
    """The job's two pipes: events to the pool process, control messages from it."""

    def __init__(self, events_fd: int, control_fd: int) -> None:
        self.events_fd = events_fd
        self.control = LineReader(control_fd)
        os.set_blocking(control_fd, False)
        self._pending: list[dict[str, Any]] = []
        self.stop_requested = False

    def send(self, message: dict[str, Any]) -> None:
        write_message(self.events_fd, message)

    def check_stop(self) -> None:
        self._pending.extend(self.control.read_available())
        self._take_stops()
        if self.stop_requested:
            raise JobStopped()

    def wait_reply(self, kind: str) -> dict[str, Any]:
        while True:
            self._pending.extend(self.control.read_available())
            self._take_stops()
            if self.stop_requested:
                raise JobStopped()
            for index, message in enumerate(self._pending):
                if message["type"] == kind:
                    return self._pending.pop(index)
            if self.control.closed:
                raise JobStopped()
            wait_readable([self.control.fd], 1.0)

    def _take_stops(self) -> None:
        if any(m["type"] == "stop" for m in self._pending):
            self.stop_requested = True
            self._pending = [m for m in self._pending if m["type"] != "stop"]


class Progress:
    """The pipeline's progress callback: sends progress, and stops a job that must stop."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.stage = "loading"
        self._last_sent = 0.0

    def __call__(self, stage: str, fraction: float, message: str) -> None:
        self.channel.check_stop()
        now = time.monotonic()
        if stage == self.stage and now - self._last_sent < _PROGRESS_MIN_INTERVAL_S:
            return
        self.stage = stage
        self._last_sent = now
        self.channel.send(
            {"type": "progress", "stage": stage, "fraction": fraction, "message": message}
        )


class PipeCheckpoints:
    """Checkpoints (optimizers.results.Checkpoints) kept by the pool process in storage: the job
    hands it files to keep and asks it for kept ones, all through the scratch folder."""

    def __init__(self, channel: Channel, scratch: Path) -> None:
        self.channel = channel
        self.scratch = scratch
        self._count = 0

    def _staged(self) -> Path:
        self._count += 1
        folder = self.scratch / "out" / "checkpoints"
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f"checkpoint-{self._count}"

    def load(self, name: str, dest: Path) -> Path | None:
        staged = self._staged()
        self.channel.send(
            {"type": "checkpoint_load", "name": name, "path": _relative(staged, self.scratch)}
        )
        reply = self.channel.wait_reply("checkpoint_loaded")
        if not reply.get("found") or not staged.is_file():
            return None
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(staged, dest)
        return dest

    def save(self, name: str, path: Path) -> None:
        staged = self._staged()
        shutil.copyfile(path, staged)
        self.channel.send(
            {"type": "checkpoint_save", "name": name, "path": _relative(staged, self.scratch)}
        )


@dataclass
class _Model:
    path: Path
    source: dict[str, Any]
    notes: list[str]


def run_job(*, events_fd: int, control_fd: int, scratch: Path) -> int:
    """Runs the job described in the scratch folder's request; returns the exit code."""
    channel = Channel(events_fd, control_fd)
    try:
        channel.send(_run(channel, scratch))
    except JobStopped:
        channel.send({"type": "stopped"})
    except OptimizerError as exc:
        error_type = MEMORY_LIMIT if _out_of_memory(exc) else exc.type
        channel.send({"type": "error", "error_type": error_type, "message": exc.message})
    except BaseException as exc:
        if _out_of_memory(exc):
            channel.send({"type": "error", "error_type": MEMORY_LIMIT, "message": str(exc)})
        elif _file_too_large(exc):
            channel.send({"type": "error", "error_type": FILE_SIZE_LIMIT, "message": str(exc)})
        else:
            traceback.print_exc()
            channel.send(
                {
                    "type": "error",
                    "error_type": INTERNAL_ERROR,
                    "message": f"{type(exc).__name__}: {exc}"[:2000],
                    "traceback": traceback.format_exc()[-8000:],
                }
            )
    return 0


def _run(channel: Channel, scratch: Path) -> dict[str, Any]:
    request = json.loads((scratch / REQUEST_FILE).read_text())
    _torch_threads_follow_affinity()
    # TMPDIR of an unconfined job (inside the sandbox /tmp is its own).
    (scratch / "tmp").mkdir(exist_ok=True)
    progress = Progress(channel)
    max_total_bytes = int(request["max_total_bytes"])
    progress("loading", 0.01, "preparing the model")
    model = _prepare_model(
        request["model"],
        scratch=scratch,
        workdir=scratch / "model",
        max_total_bytes=max_total_bytes,
        progress=progress,
    )
    extra: dict[str, Path] = {}
    for model_id, described in request["extra_models"].items():
        prepared = _prepare_model(
            described,
            scratch=scratch,
            workdir=scratch / "models" / check_path(model_id),
            max_total_bytes=max_total_bytes,
            progress=progress,
        )
        extra[model_id] = prepared.path
        model.notes.extend(f"model {model_id}: {note}" for note in prepared.notes)
    datasets = {key: scratch / check_path(path) for key, path in request["datasets"].items()}
    spec = PipelineSpec.model_validate(request["spec"])
    out = scratch / "out"

    def on_stage(stage: dict[str, Any], files: ArtifactFiles) -> None:
        folder = out / f"pass{stage['pass']}"
        folder.mkdir(parents=True, exist_ok=True)
        listed = []
        for kind, name, path in files:
            if kind == "stage_model":
                stem = PurePosixPath(name).stem
                packaged, content_type, source = package_model(path, folder, stem=stem)
                if packaged != name:  # the pipeline and the packaging disagree: a bug
                    raise RuntimeError(f"stage model packaged as {packaged}, expected {name}")
            else:
                content_type = (
                    "application/json" if path.suffix == ".json" else ("application/octet-stream")
                )
                source = path
            # Later passes still read the stage's model: the pool process gets its own link.
            staged = _link_or_copy(source, folder / f"{name}.upload")
            listed.append(
                {
                    "kind": kind,
                    "name": name,
                    "content_type": content_type,
                    "path": _relative(staged, scratch),
                }
            )
        channel.send({"type": "stage", "stage": stage, "files": listed})

    calibration_cache = _calibration_cache(request, scratch)
    outcome = run_pipeline(
        model_path=model.path,
        spec=spec,
        datasets=datasets,
        workdir=scratch / "work",
        progress=progress,
        models=extra,
        checkpoints=PipeCheckpoints(channel, scratch),
        on_stage=on_stage,
        calibration_cache=calibration_cache,
        dataset_sha256=request.get("dataset_sha256") or {},
    )
    progress("storing", 0.98, "storing artifacts")
    name, content_type, path = package_model(outcome.model_path, out / "final")
    return {
        "type": "result",
        "result": {
            "metrics": outcome.metrics,
            "notes": [*model.notes, *outcome.notes],
            "passes": outcome.passes,
            "stages": outcome.stages,
            "source": model.source,
        },
        "model": {"name": name, "content_type": content_type, "path": _relative(path, scratch)},
    }


def _calibration_cache(request: dict[str, Any], scratch: Path) -> Path | None:
    """The folder of kept calibrations the pool process filled, for a job that calibrates;
    the library checks every entry before it uses one (optimizers.quantization.
    calibration_cache)."""
    relative = request.get("calibration_cache")
    if not relative:
        return None
    folder = scratch / check_path(relative)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _torch_threads_follow_affinity() -> None:
    """Training runs as many torch threads as the cores this job may use (its worker's
    MODELPRESS_CPUS), as the onnxruntime sessions do, not one per core of the host."""
    import torch

    torch.set_num_threads(default_threads())


def check_path(path: str) -> str:
    try:
        return check_relative(path)
    except ProtocolError as exc:
        raise InvalidModelError(str(exc)) from exc


def _prepare_model(
    described: dict[str, Any],
    *,
    scratch: Path,
    workdir: Path,
    max_total_bytes: int,
    progress: ProgressFn,
) -> _Model:
    """The ONNX model the pipeline runs on, what it came from, and notes for the result."""
    model = to_onnx(
        scratch / check_path(described["path"]),
        described["format"],
        info=described["info"],
        workdir=workdir,
        max_total_bytes=max_total_bytes,
        progress=progress,
    )
    return _Model(model.path, model.source, model.notes)


def package_model(
    model_path: Path, workdir: Path, *, stem: str = "optimized"
) -> tuple[str, str, Path]:
    """(name, content type, path) of a model to keep: the .onnx file, or a zip of it and its
    external data files when its weights live beside it."""
    proto = onnx.load(str(model_path), load_external_data=False)
    locations = sorted(external_data_locations(proto))
    del proto
    workdir.mkdir(parents=True, exist_ok=True)
    if not locations:
        return f"{stem}.onnx", "application/octet-stream", model_path
    package = workdir / f"{stem}.zip"
    onnx_name = f"{stem}.onnx" if f"{stem}.onnx" not in locations else model_path.name
    with zipfile.ZipFile(package, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        archive.write(model_path, arcname=onnx_name)
        for location in locations:
            check_relative_location(location, what="the external data location")
            archive.write(model_path.parent / location, arcname=location)
    return package.name, "application/zip", package


def _link_or_copy(source: Path, dest: Path) -> Path:
    dest.unlink(missing_ok=True)
    try:
        os.link(source, dest)
    except OSError:
        shutil.copyfile(source, dest)
    return dest


def _relative(path: Path, scratch: Path) -> str:
    return path.resolve().relative_to(scratch.resolve()).as_posix()


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen and len(seen) < 20:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _out_of_memory(exc: BaseException) -> bool:
    """Whether the failure is an allocation the kernel's memory limit refused."""
    for link in _chain(exc):
        if isinstance(link, MemoryError):
            return True
        text = str(link).lower()
        # A GPU out of memory is not the job's (CPU) memory limit: it fails as it is.
        if "cuda" not in text and any(marker in text for marker in _OUT_OF_MEMORY_TEXTS):
            return True
    return False


def _file_too_large(exc: BaseException) -> bool:
    return any(isinstance(e, OSError) and e.errno == errno.EFBIG for e in _chain(exc))
