"""The supervising side of a job (worker.monitor) on real child processes: limits, cancel,
and a lost job, each seen from outside a process that does not cooperate."""

from __future__ import annotations

import os
import time
from multiprocessing.synchronize import Event
from pathlib import Path

from core import jobstate
from core.db import session_factory
from core.models import Job
from core.settings import Settings
from tests.worker.test_jobstate import _job
from worker.monitor import Limits, StopReason, run_supervised

ROOMY = Limits(soft_time_s=60, hard_time_s=120, memory_mb=None)


def _claimed_job() -> str:
    with session_factory()() as session:
        job_id = _job(session)
        assert jobstate.claim(session, job_id, "test") == 1
        session.commit()
    return job_id


def _settings() -> Settings:
    return Settings(heartbeat_interval_s=0.2, job_cancel_grace_s=0.5)


def _ignore_stop(stop: Event) -> None:
    time.sleep(60)  # like a long native call: never looks at `stop`


def _stop_when_asked(stop: Event) -> None:
    while not stop.wait(0.05):
        pass


def test_soft_limit_asks_and_hard_limit_kills(service_env: dict[str, str]) -> None:
    job_id = _claimed_job()
    # Stops by itself when asked: not killed, even on a slow machine.
    polite = run_supervised(
        _stop_when_asked,
        job_id=job_id,
        attempt=1,
        limits=Limits(soft_time_s=0.5, hard_time_s=20, memory_mb=None),
        settings=_settings(),
    )
    assert (polite.reason, polite.killed, polite.exitcode) == (StopReason.time_limit, False, 0)

    began = time.monotonic()
    stuck = run_supervised(
        _ignore_stop,
        job_id=job_id,
        attempt=1,
        limits=Limits(soft_time_s=0.5, hard_time_s=1.5, memory_mb=None),
        settings=_settings(),
    )
    assert (stuck.reason, stuck.killed) == (StopReason.time_limit, True)
    assert 1.5 <= time.monotonic() - began < 30  # not the minute it meant to sleep


def test_memory_over_the_limit_kills_the_process(service_env: dict[str, str]) -> None:
    def hungry(stop: Event) -> None:
        hoard = b"x" * (300 * 1024 * 1024)  # every page written, so every page resident
        time.sleep(60)
        del hoard

    job_id = _claimed_job()
    limits = Limits(soft_time_s=60, hard_time_s=120, memory_mb=100)
    watch = run_supervised(hungry, job_id=job_id, attempt=1, limits=limits, settings=_settings())
    assert (watch.reason, watch.killed) == (StopReason.memory_limit, True)
    assert watch.peak_memory_mb > 100

    # A process that stays small is left alone.
    small = run_supervised(
        lambda stop: None, job_id=job_id, attempt=1, limits=limits, settings=_settings()
    )
    assert (small.reason, small.killed, small.exitcode) == (None, False, 0)


def test_cancel_is_seen_at_the_heartbeat_and_a_stuck_process_killed_after_the_grace(
    service_env: dict[str, str],
) -> None:
    job_id = _claimed_job()

    def canceled_meanwhile(stop: Event) -> None:
        with session_factory()() as session:
            job = session.get(Job, job_id)
            assert job is not None
            assert jobstate.request_cancel(session, job)
            session.commit()
        time.sleep(60)

    began = time.monotonic()
    watch = run_supervised(
        canceled_meanwhile, job_id=job_id, attempt=1, limits=ROOMY, settings=_settings()
    )
    assert (watch.reason, watch.killed) == (StopReason.canceled, True)
    assert time.monotonic() - began < 30  # not the minute it meant to sleep


def test_an_attempt_that_lost_its_job_is_stopped(service_env: dict[str, str]) -> None:
    job_id = _claimed_job()

    def reaped_meanwhile(stop: Event) -> None:
        with session_factory()() as session:
            session.query(Job).filter(Job.id == job_id).update({"attempts": 2})
            session.commit()
        time.sleep(60)

    watch = run_supervised(
        reaped_meanwhile, job_id=job_id, attempt=1, limits=ROOMY, settings=_settings()
    )
    assert (watch.reason, watch.killed) == (StopReason.lost, True)


def test_the_job_process_dies_with_its_supervisor(service_env: dict[str, str]) -> None:
    """A pool process killed from outside must not leave its job's process running on."""
    read_end, write_end = os.pipe()
    supervisor = os.fork()
    if supervisor == 0:  # pragma: no cover - the forked supervisor
        os.close(read_end)

        def report_pid(stop: Event) -> None:
            os.write(write_end, f"{os.getpid()}\n".encode())
            time.sleep(60)

        try:
            run_supervised(
                report_pid, job_id=_claimed_job(), attempt=1, limits=ROOMY, settings=_settings()
            )
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        job_process = int(pipe.readline())
    os.kill(supervisor, 9)
    os.waitpid(supervisor, 0)
    deadline = time.monotonic() + 30
    while _alive(job_process):
        assert time.monotonic() < deadline, f"job process {job_process} outlived its supervisor"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    """Running or sleeping; a zombie (dead, not yet reaped by whoever adopted it) is not."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
