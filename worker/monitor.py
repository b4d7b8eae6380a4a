"""The pool process's side of a job: it watches the job's confined process (worker.sandbox),
handing its messages to the runner, keeping the heartbeat, noticing a cancel, and enforcing
the job's time and memory limits.

Why a separate process: a job stuck inside a long native call (an onnxruntime or torch
kernel) never reaches a progress report, so only a process that is not busy with the work can
stop it on time, and only killing a process frees what it holds. The kernel enforces limits
of its own on the job process (rlimits, worker.jobhost); the ones here are the job's own
(soft and hard time, memory sampled as the job's private pages) and say why a job stopped.
"""

from __future__ import annotations

import enum
import logging
import math
import os
import socket
import time
from dataclasses import dataclass
from typing import Any, Protocol

from core import jobstate
from core.db import session_scope
from core.jobspec import JobLimits as RequestedLimits
from core.settings import Settings
from core.tables import JobStatus

log = logging.getLogger(__name__)

#: How often the supervising process checks the job's process (exit, memory, limits).
_POLL_S = 0.2


def worker_name() -> str:
    """This pool process, as a job's `worker` and the heartbeat metrics name it."""
    return f"{socket.gethostname()}:{os.getpid()}"


class StopReason(enum.StrEnum):
    canceled = "canceled"
    time_limit = "time_limit"
    memory_limit = "memory_limit"
    #: Another attempt owns the job now (this one was reaped); nothing is written.
    lost = "lost"
    #: The job's process broke the protocol (worker.protocol): it is killed.
    protocol = "protocol"


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


class Supervised(Protocol):
    """A job's process as the supervisor sees it (worker.sandbox.JobProcess)."""

    exitcode: int | None

    def poll(self, timeout: float) -> list[dict[str, Any]]:
        """Its messages, waiting up to `timeout`; sets `exitcode` once it has ended."""
        ...

    def request_stop(self) -> None: ...

    def kill(self) -> int: ...

    def private_memory_mb(self) -> float: ...


class MessageHandler(Protocol):
    def __call__(self, message: dict[str, Any]) -> StopReason | None:
        """Acts on one message from the job's process; a reason stops the job."""
        ...


def supervise(
    process: Supervised,
    *,
    on_message: MessageHandler,
    job_id: str,
    attempt: int,
    limits: Limits,
    settings: Settings,
) -> Supervision:
    """Watches `process` until it ends, passing its messages to `on_message`. At the soft
    time limit or a cancel it is asked to stop (it stops at its next progress report); at the
    hard limit, over its memory limit, after the cancel grace, or when this attempt lost the
    job, it is killed."""
    try:
        return _watch(
            process,
            on_message=on_message,
            job_id=job_id,
            attempt=attempt,
            limits=limits,
            settings=settings,
        )
    except BaseException:
        # Watching failed (a bug, a signal): the job's process must not run on unwatched.
        process.kill()
        raise


def _watch(
    process: Supervised,
    *,
    on_message: MessageHandler,
    job_id: str,
    attempt: int,
    limits: Limits,
    settings: Settings,
) -> Supervision:
    watch = Supervision(exitcode=0)
    started = time.monotonic()
    next_beat = started + settings.heartbeat_interval_s
    kill_at = math.inf
    last_beat = started
    next_memory_check = started
    while True:
        for message in process.poll(_POLL_S):
            reason = on_message(message)
            if reason is not None and watch.reason is None:
                watch.reason = reason
        if watch.reason in (StopReason.lost, StopReason.protocol):
            break
        if process.exitcode is not None:
            watch.exitcode = process.exitcode
            return watch
        now = time.monotonic()
        # Every _POLL_S, not after every message: finding the job's processes reads every
        # process's /proc entry, and a job that reports often would have it done many times
        # a second, on the worker's own cores.
        if now >= next_memory_check:
            next_memory_check = now + _POLL_S
            used_mb = process.private_memory_mb()
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
            process.request_stop()
        if now >= next_beat:
            next_beat = now + settings.heartbeat_interval_s
            status = _beat(job_id, attempt)
            if status is _UNREACHABLE:
                # Past the heartbeat timeout another worker's reaper may have taken the job
                # over: this attempt gives up, and the database's state decides what follows.
                if now - last_beat > settings.heartbeat_timeout_s:
                    log.error("job %s: database unreachable past the heartbeat timeout", job_id)
                    watch.reason = StopReason.lost
                    break
                continue
            last_beat = now
            if status is None:
                watch.reason = StopReason.lost
                break
            if status == JobStatus.canceling and watch.reason != StopReason.canceled:
                watch.reason = StopReason.canceled
                process.request_stop()
                kill_at = now + settings.job_cancel_grace_s
    watch.exitcode = process.kill()
    watch.killed = True
    return watch


#: What a heartbeat returns while the database is unreachable.
_UNREACHABLE = "unreachable"


def _beat(job_id: str, attempt: int) -> str | None:
    """The job's status after a heartbeat, None if this attempt lost the job, _UNREACHABLE
    while the database is away (a hiccup is not a lost job)."""
    try:
        with session_scope() as session:
            return jobstate.heartbeat(session, job_id, attempt)
    except Exception:
        log.warning("heartbeat for job %s failed", job_id, exc_info=True)
        return _UNREACHABLE
