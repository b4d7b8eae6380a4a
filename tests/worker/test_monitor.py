"""The supervising side of a job (worker.monitor) on real processes: limits, cancel, and a
lost job, each seen from outside a process that does not cooperate."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from typing import Any

from core import jobstate
from core.db import session_factory
from core.settings import Settings
from core.tables import Job
from tests.core.rows import insert_job as _job
from worker.monitor import Limits, StopReason, Supervision, supervise
from worker.sandbox import _private_memory_mb

ROOMY = Limits(soft_time_s=60, hard_time_s=120, memory_mb=None)


class _Script:
    """A real process running a few lines of Python: as uncooperative as those lines are.
    It is asked to stop with a line on its stdin (the job process gets a `stop` message)."""

    def __init__(self, code: str) -> None:
        self.popen = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE)
        self.exitcode: int | None = None

    def poll(self, timeout: float) -> list[dict[str, Any]]:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.exitcode = self.popen.wait(timeout)
        return []

    def request_stop(self) -> None:
        assert self.popen.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            self.popen.stdin.write(b"stop\n")
            self.popen.stdin.flush()

    def kill(self) -> int:
        self.popen.kill()
        self.exitcode = self.popen.wait()
        return self.exitcode

    def private_memory_mb(self) -> float:
        return _private_memory_mb(self.popen.pid)


def _run(code: str, job_id: str, limits: Limits) -> Supervision:
    return supervise(
        _Script(code),
        on_message=lambda message: None,
        job_id=job_id,
        attempt=1,
        limits=limits,
        settings=_settings(),
    )


IGNORES_STOP = "import time; time.sleep(60)"  # like a long native call
STOPS_WHEN_ASKED = "import sys; sys.stdin.readline()"


def _claimed_job() -> str:
    with session_factory()() as session:
        job_id = _job(session)
        assert jobstate.claim(session, job_id, "test") == 1
        session.commit()
    return job_id


def _settings() -> Settings:
    return Settings(heartbeat_interval_s=0.2, job_cancel_grace_s=0.5)


def test_soft_limit_asks_and_hard_limit_kills(service_env: dict[str, str]) -> None:
    job_id = _claimed_job()
    # Stops by itself when asked: not killed, even on a slow machine.
    polite = _run(STOPS_WHEN_ASKED, job_id, Limits(soft_time_s=0.5, hard_time_s=20, memory_mb=None))
    assert (polite.reason, polite.killed, polite.exitcode) == (StopReason.time_limit, False, 0)

    began = time.monotonic()
    stuck = _run(IGNORES_STOP, job_id, Limits(soft_time_s=0.5, hard_time_s=1.5, memory_mb=None))
    assert (stuck.reason, stuck.killed) == (StopReason.time_limit, True)
    assert 1.5 <= time.monotonic() - began < 30  # not the minute it meant to sleep


def test_memory_over_the_limit_kills_the_process(service_env: dict[str, str]) -> None:
    job_id = _claimed_job()
    limits = Limits(soft_time_s=60, hard_time_s=120, memory_mb=100)
    # Every page written, so every page resident.
    watch = _run("import time; hoard = b'x' * (300 << 20); time.sleep(60)", job_id, limits)
    assert (watch.reason, watch.killed) == (StopReason.memory_limit, True)
    assert watch.peak_memory_mb > 100

    # A process that stays small is left alone.
    small = _run("pass", job_id, limits)
    assert (small.reason, small.killed, small.exitcode) == (None, False, 0)


def test_cancel_is_seen_at_the_heartbeat_and_a_stuck_process_killed_after_the_grace(
    service_env: dict[str, str],
) -> None:
    job_id = _claimed_job()
    with session_factory()() as session:
        job = session.get(Job, job_id)
        assert job is not None
        assert jobstate.request_cancel(session, job)
        session.commit()

    began = time.monotonic()
    watch = _run(IGNORES_STOP, job_id, ROOMY)
    assert (watch.reason, watch.killed) == (StopReason.canceled, True)
    assert time.monotonic() - began < 30  # not the minute it meant to sleep


def test_an_attempt_that_lost_its_job_is_stopped(service_env: dict[str, str]) -> None:
    job_id = _claimed_job()
    with session_factory()() as session:
        session.query(Job).filter(Job.id == job_id).update({"attempts": 2})
        session.commit()

    watch = _run(IGNORES_STOP, job_id, ROOMY)
    assert (watch.reason, watch.killed) == (StopReason.lost, True)
