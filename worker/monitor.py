"""The pool process's side of a job: it runs the job in a child process and watches it,
keeping the heartbeat, noticing a cancel, and enforcing the job's time and memory limits.

Why a child process: a job stuck inside a long native call (an onnxruntime or torch kernel)
never reaches a progress report, so only a process that is not busy with the work can stop it
on time, and only killing a process frees what it holds. The pool process forks: the worker
imported onnxruntime and torch before forking its pool (optimizers.pipeline.preload), so a
fork starts in milliseconds with those modules shared. Forking is safe here because the pool
process does no numeric work itself (no torch or onnxruntime thread pools exist in it), runs
no threads (the heartbeat lives in this supervision loop, not in a thread), and closes its
database connections before forking, so parent and child never share a connection.
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import logging
import math
import multiprocessing
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.synchronize import Event
from pathlib import Path

from core import jobstate
from core.db import session_factory, session_scope
from core.jobspec import JobLimits as RequestedLimits
from core.models import JobStatus
from core.settings import Settings

log = logging.getLogger(__name__)

#: How often the supervising process checks the job's process (exit, memory, limits).
_POLL_S = 0.2
_MB = 1024 * 1024
_PR_SET_PDEATHSIG = 1


class JobStopped(Exception):
    """Raised inside the job's process (through the progress callback) when the job must
    stop: canceled, over its soft time limit, or no longer owned by this attempt."""


class StopReason(enum.StrEnum):
    canceled = "canceled"
    time_limit = "time_limit"
    memory_limit = "memory_limit"
    #: Another attempt owns the job now (this one was reaped); nothing is written.
    lost = "lost"


@dataclass(frozen=True)
class Limits:
    soft_time_s: float
    hard_time_s: float
    memory_mb: int | None

    @classmethod
    def of(cls, settings: Settings, requested: RequestedLimits) -> Limits:
        """The worker's limits, lowered (never raised) by the job spec's."""
        hard = min(settings.job_hard_time_limit_s, requested.hard_time_limit_s or math.inf)
        soft = min(settings.job_soft_time_limit_s, requested.soft_time_limit_s or math.inf, hard)
        memory = [m for m in (settings.job_memory_limit_mb, requested.memory_limit_mb) if m]
        return cls(soft_time_s=soft, hard_time_s=hard, memory_mb=min(memory) if memory else None)


@dataclass
class Supervision:
    """How the job's process ended, as the supervising process saw it."""

    exitcode: int
    #: Why the supervising process stopped the job; None if it ended by itself.
    reason: StopReason | None = None
    #: Whether it had to be killed (it did not stop at its progress reports).
    killed: bool = False
    #: Its highest private memory seen, in MB.
    peak_memory_mb: float = 0.0


def run_supervised(
    target: Callable[[Event], None],
    *,
    job_id: str,
    attempt: int,
    limits: Limits,
    settings: Settings,
) -> Supervision:
    """Runs target(stop) in a forked child process and watches it until it ends. The child
    must check stop.is_set() at its progress reports and then raise JobStopped."""
    stop = multiprocessing.get_context("fork").Event()
    # No pooled connection may cross the fork (see the module docstring).
    session_factory().kw["bind"].dispose()
    # A plain fork, not multiprocessing.Process: Celery's pool processes are daemonic, and
    # multiprocessing refuses to start children from a daemonic process.
    pid = _fork(target, stop)
    try:
        return _watch(pid, stop, job_id=job_id, attempt=attempt, limits=limits, settings=settings)
    except BaseException:
        # Watching failed (a bug, a signal): the job's process must not run on unwatched.
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        raise


def _watch(
    pid: int, stop: Event, *, job_id: str, attempt: int, limits: Limits, settings: Settings
) -> Supervision:
    watch = Supervision(exitcode=0)
    started = time.monotonic()
    next_beat = started + settings.heartbeat_interval_s
    kill_at = math.inf
    while True:
        exitcode = _exitcode(pid, wait=False)
        if exitcode is not None:
            watch.exitcode = exitcode
            return watch
        time.sleep(_POLL_S)
        now = time.monotonic()
        used_mb = _private_memory_mb(pid)
        watch.peak_memory_mb = max(watch.peak_memory_mb, used_mb)
        if limits.memory_mb is not None and used_mb > limits.memory_mb:
            watch.reason = StopReason.memory_limit
            break
        if now - started >= limits.hard_time_s:
            watch.reason = watch.reason or StopReason.time_limit
            break
        if now >= kill_at:
            break
        if watch.reason is None and now - started >= limits.soft_time_s:
            watch.reason = StopReason.time_limit
            stop.set()
        if now >= next_beat:
            next_beat = now + settings.heartbeat_interval_s
            status = _beat(job_id, attempt)
            if status is None:
                watch.reason = StopReason.lost
                break
            if status == JobStatus.cancelling and watch.reason != StopReason.canceled:
                watch.reason = StopReason.canceled
                stop.set()
                kill_at = now + settings.job_cancel_grace_s
    os.kill(pid, signal.SIGKILL)
    watch.killed = True
    code = _exitcode(pid, wait=True)
    watch.exitcode = -signal.SIGKILL if code is None else code
    return watch


def _fork(target: Callable[[Event], None], stop: Event) -> int:
    parent = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    # The job's process: whatever happens, it must never return into the caller's code.
    code = 1
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _die_with_parent(parent)
        target(stop)
        code = 0
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _exitcode(pid: int, *, wait: bool) -> int | None:
    """The process's exit code (minus the signal that killed it), None while it runs."""
    done, status = os.waitpid(pid, 0 if wait else os.WNOHANG)
    return os.waitstatus_to_exitcode(status) if done else None


def _beat(job_id: str, attempt: int) -> str | None:
    """The job's status after a heartbeat, None if this attempt lost the job. A database
    hiccup is not a lost job: the status is then taken as unchanged."""
    try:
        with session_scope() as session:
            return jobstate.heartbeat(session, job_id, attempt)
    except Exception:
        log.warning("heartbeat for job %s failed", job_id, exc_info=True)
        return JobStatus.running


def _private_memory_mb(pid: int) -> float:
    """Resident and swapped memory the process has of its own. Pages it still shares with
    the worker (the libraries loaded before the fork) do not count: they cost nothing more."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:  # the process just ended, or no /proc (then no memory limit applies)
        return 0.0
    kb = 0
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name in ("Private_Clean", "Private_Dirty", "Swap"):
            kb += int(value.split()[0])
    return kb / 1024


def _die_with_parent(parent: int) -> None:
    """The job's process must not outlive the pool process that enforces its limits (a pool
    process killed by Celery's own time limit, or by SIGKILL)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the progress reports check the parent
        pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)
