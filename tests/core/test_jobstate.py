"""Job state changes are conditional: no job runs twice, finishes twice, or stays running."""

from __future__ import annotations

from datetime import timedelta

import pytest
import time_machine
from sqlalchemy import text, update
from sqlalchemy.orm import Session

from core import jobstate
from core.db import reset_engines, session_factory, utcnow
from core.dbclock import db_utcnow
from core.tables import Job, JobStatus
from tests.core.rows import insert_job as _job


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_only_one_claim_wins(service_env: dict[str, str]) -> None:
    with session_factory()() as session:
        job_id = _job(session)
        assert jobstate.claim(session, job_id, "w1") == 1
        assert jobstate.claim(session, job_id, "w2") is None
        session.commit()
        job = session.get(Job, job_id)
        assert job is not None and job.status == "running" and job.worker == "w1"


def test_only_the_owning_attempt_finishes(service_env: dict[str, str]) -> None:
    with session_factory()() as session:
        job_id = _job(session)
        attempt = jobstate.claim(session, job_id, "w1")
        assert attempt == 1
        assert not jobstate.finish(session, job_id, 2, status=JobStatus.succeeded, result={})
        assert jobstate.finish(session, job_id, 1, status=JobStatus.succeeded, result={"a": 1})
        assert not jobstate.finish(
            session, job_id, 1, status=JobStatus.failed, error_type="x", error_message="y"
        )
        session.commit()
        job = session.get(Job, job_id)
        assert job is not None and job.status == "succeeded" and job.result == {"a": 1}


def test_cancel_running_job_is_seen_by_heartbeat(service_env: dict[str, str]) -> None:
    with session_factory()() as session:
        job_id = _job(session)
        jobstate.claim(session, job_id, "w1")
        job = session.get(Job, job_id)
        assert job is not None
        session.refresh(job)
        assert jobstate.request_cancel(session, job)
        assert jobstate.heartbeat(session, job_id, 1) == JobStatus.canceling


def test_a_job_claimed_while_the_cancel_is_asked_is_still_canceled(
    service_env: dict[str, str],
) -> None:
    factory = session_factory()
    with factory() as api, factory() as worker:
        job_id = _job(api)
        job = api.get(Job, job_id)
        assert job is not None and job.status == JobStatus.queued
        # The worker claims it after the API read it as queued, before the API's update.
        assert jobstate.claim(worker, job_id, "w1") == 1
        worker.commit()
        assert jobstate.request_cancel(api, job)
        api.commit()
        api.refresh(job)
        assert job.status == JobStatus.canceling
        assert jobstate.heartbeat(worker, job_id, 1) == JobStatus.canceling


def test_a_job_finished_while_the_cancel_is_asked_is_refused(service_env: dict[str, str]) -> None:
    factory = session_factory()
    with factory() as api, factory() as worker:
        job_id = _job(api)
        job = api.get(Job, job_id)
        assert job is not None
        assert jobstate.claim(worker, job_id, "w1") == 1
        assert jobstate.finish(worker, job_id, 1, status=JobStatus.succeeded, result={})
        worker.commit()
        assert not jobstate.request_cancel(api, job)
        assert job.status == JobStatus.succeeded


def test_stale_jobs_are_requeued_then_failed(service_env: dict[str, str]) -> None:
    with session_factory()() as session:
        job_id = _job(session)
        old = utcnow() - timedelta(minutes=10)
        for expected_attempt in (1, 2):
            assert jobstate.claim(session, job_id, "doomed") == expected_attempt
            session.query(Job).filter(Job.id == job_id).update({"heartbeat_at": old})
            session.commit()
            requeued = jobstate.reap_stale(session, timeout_s=60)
            session.commit()
            job = session.get(Job, job_id)
            assert job is not None
            session.refresh(job)
            if expected_attempt == 1:
                assert requeued == [(job_id, "cpu")]
                assert job.status == "queued"
                assert "lost its worker" in (job.progress_message or "")
            else:
                assert requeued == []
                assert job.status == "failed"
                assert job.error_type == "worker_lost"
        # A heartbeat from the lost attempt no longer counts.
        assert jobstate.heartbeat(session, job_id, 2) is None


def test_fresh_heartbeat_is_not_reaped(service_env: dict[str, str]) -> None:
    with session_factory()() as session:
        job_id = _job(session)
        jobstate.claim(session, job_id, "alive")
        session.commit()
        assert jobstate.reap_stale(session, timeout_s=60) == []
        job = session.get(Job, job_id)
        assert job is not None and job.status == "running"


def test_queued_jobs_the_broker_may_have_lost_are_resent_once_per_interval(
    service_env: dict[str, str],
) -> None:
    with session_factory()() as session:
        waiting = _job(session)
        fresh = _job(session)
        running = _job(session)
        old = utcnow() - timedelta(minutes=10)
        session.query(Job).filter(Job.id.in_([waiting, running])).update({"sent_at": old})
        jobstate.claim(session, running, "busy")
        session.commit()

        assert jobstate.resend_stale_queued(session, after_s=60) == [(waiting, "cpu")]
        session.commit()
        # Just re-sent: not again until another interval has passed.
        assert jobstate.resend_stale_queued(session, after_s=60) == []
        # A second message is harmless: whichever arrives first claims, the other is dropped.
        assert jobstate.claim(session, waiting, "w1") == 1
        assert jobstate.claim(session, waiting, "w2") is None
        session.commit()
        assert jobstate.resend_stale_queued(session, after_s=0.001) == [(fresh, "cpu")]


def test_jobs_the_broker_never_took_are_sent_at_the_next_pass(service_env: dict[str, str]) -> None:
    with session_factory()() as session:
        unsent = _job(session)
        sent = _job(session)
        jobstate.mark_unsent(session, [unsent])
        session.commit()
        # However recently queued: the broker was down, so there is nothing to wait for.
        assert jobstate.resend_stale_queued(session, after_s=300) == [(unsent, "cpu")]
        session.commit()
        assert jobstate.resend_stale_queued(session, after_s=300) == []
        assert sent != unsent


def _clock_off_by(hours: float) -> time_machine.travel:
    """This process's clock (time.time, datetime.now, ...) set hours away from the real time,
    and still ticking; the database server's clock is left alone."""
    return time_machine.travel(utcnow() + timedelta(hours=hours), tick=True)


def _status(session: Session, job_id: str) -> str:
    session.expire_all()
    return session.get_one(Job, job_id).status


def test_a_reaper_whose_clock_runs_hours_fast_takes_no_healthy_job(
    service_env: dict[str, str],
) -> None:
    with session_factory()() as session:
        running = _job(session)
        assert jobstate.claim(session, running, "healthy") == 1
        just_sent = _job(session)
        session.commit()

        with _clock_off_by(+3):
            assert utcnow() - timedelta(hours=2) > session.get_one(Job, running).heartbeat_at
            assert jobstate.reap_stale(session, timeout_s=60) == []
            assert jobstate.resend_stale_queued(session, after_s=300) == []
            session.commit()
        assert _status(session, running) == "running"
        assert _status(session, just_sent) == "queued"


def test_a_worker_whose_clock_runs_hours_slow_keeps_its_job(service_env: dict[str, str]) -> None:
    with session_factory()() as session:
        job_id = _job(session)
        with _clock_off_by(-3):
            assert jobstate.claim(session, job_id, "slow-clock") == 1
            assert jobstate.heartbeat(session, job_id, 1) == JobStatus.running
            session.commit()
        assert jobstate.reap_stale(session, timeout_s=60) == []
        session.commit()
        assert _status(session, job_id) == "running"


def test_a_reaper_whose_clock_runs_hours_slow_still_reaps_a_dead_job(
    service_env: dict[str, str],
) -> None:
    with session_factory()() as session:
        job_id = _job(session)
        assert jobstate.claim(session, job_id, "died") == 1
        # Its worker died ten minutes ago, by the database's clock.
        session.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=db_utcnow(-600)))
        session.commit()
        with _clock_off_by(-3):
            assert jobstate.reap_stale(session, timeout_s=60) == [(job_id, "cpu")]
            session.commit()
        assert _status(session, job_id) == "queued"


def test_heartbeats_are_utc_whatever_the_database_time_zone(service_env: dict[str, str]) -> None:
    with session_factory()() as session:
        if session.get_bind().dialect.name == "postgresql":
            # Fourteen hours ahead of UTC: a bare now() would be stored fourteen hours off.
            name = session.scalar(text("SELECT current_database()"))
            session.execute(text(f"ALTER DATABASE \"{name}\" SET TimeZone TO 'Pacific/Kiritimati'"))
            session.commit()
    reset_engines()  # new connections, which take the database's time zone
    with session_factory()() as session:
        if session.get_bind().dialect.name == "postgresql":
            assert session.scalar(text("SHOW TimeZone")) == "Pacific/Kiritimati"
        job_id = _job(session)
        assert jobstate.claim(session, job_id, "w") == 1
        session.commit()
        heartbeat = session.get_one(Job, job_id).heartbeat_at
        assert heartbeat is not None
        assert abs(heartbeat - utcnow()) < timedelta(minutes=1)


def test_a_job_whose_queue_no_worker_serves_is_not_sent_again(service_env: dict[str, str]) -> None:
    with session_factory()() as session:
        gpu = _job(session, queue="gpu", sent_at=utcnow() - timedelta(hours=1))
        cpu = _job(session, sent_at=utcnow() - timedelta(hours=1))
        # Only cpu workers are live: the gpu job's first message waits in the broker.
        assert jobstate.resend_stale_queued(session, after_s=60, queues={"cpu"}) == [(cpu, "cpu")]
        session.commit()
        assert jobstate.resend_stale_queued(session, after_s=60, queues={"cpu"}) == []
        # A gpu worker appeared: the job that waited is sent, once.
        assert jobstate.resend_stale_queued(session, after_s=60, queues={"cpu", "gpu"}) == [
            (gpu, "gpu")
        ]
        session.commit()
        assert jobstate.resend_stale_queued(session, after_s=60, queues={"cpu", "gpu"}) == []


def test_a_job_the_broker_never_took_is_sent_even_while_no_worker_serves_it(
    service_env: dict[str, str],
) -> None:
    with session_factory()() as session:
        unsent = _job(session, queue="gpu")
        jobstate.mark_unsent(session, [unsent])
        session.commit()
        # Its first message then waits in the broker for a gpu worker; it is not sent again.
        assert jobstate.resend_stale_queued(session, after_s=0.001, queues=set()) == [
            (unsent, "gpu")
        ]
        session.commit()
        assert jobstate.resend_stale_queued(session, after_s=0.001, queues=set()) == []
