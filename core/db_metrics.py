"""Metrics that the database knows, read at scrape time: jobs by status and queue, how many
jobs wait in each queue and for how long, the bytes of stored models, datasets and artifacts.
Every process and machine sees the same numbers, so any API process can answer for all."""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from core.db import session_factory, utcnow
from core.queue import QUEUES
from core.tables import Artifact, Dataset, Job, JobStatus, StoredModel

log = logging.getLogger(__name__)


class DatabaseCollector(Collector):
    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily(
            "modelpress_database_metrics_up",
            "1 when the database answered this scrape's queries; 0 leaves out the series "
            "read from it (jobs, queues, storage bytes).",
        )
        try:
            with session_factory()() as session:
                families = list(_families(session))
        except SQLAlchemyError as exc:
            log.warning("metrics: the database did not answer: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families


def _families(session: Session) -> Iterator[GaugeMetricFamily]:
    counts = {
        (queue, status): count
        for queue, status, count in session.execute(
            select(Job.queue, Job.status, func.count()).group_by(Job.queue, Job.status)
        )
    }
    # Every queue and status is listed, zero or not, so that a series never vanishes.
    queues = sorted(set(QUEUES) | {queue for queue, _ in counts})
    jobs = GaugeMetricFamily(
        "modelpress_jobs", "Jobs in the database by queue and status.", labels=["queue", "status"]
    )
    depth = GaugeMetricFamily(
        "modelpress_queue_depth", "Jobs queued and not yet claimed by a worker.", labels=["queue"]
    )
    for queue in queues:
        for status in JobStatus:
            jobs.add_metric([queue, status.value], counts.get((queue, status.value), 0))
        depth.add_metric([queue], counts.get((queue, JobStatus.queued.value), 0))
    yield jobs
    yield depth

    oldest = dict(
        session.execute(
            select(Job.queue, func.min(Job.queued_at))
            .where(Job.status == JobStatus.queued)
            .group_by(Job.queue)
        ).all()
    )
    now = utcnow()
    wait = GaugeMetricFamily(
        "modelpress_queue_oldest_wait_seconds",
        "How long the oldest queued job of a queue has waited (0 when none waits).",
        labels=["queue"],
    )
    for queue in queues:
        since = oldest.get(queue)
        wait.add_metric([queue], max((now - since).total_seconds(), 0.0) if since else 0.0)
    yield wait

    stored = GaugeMetricFamily(
        "modelpress_storage_bytes",
        "Bytes of the stored models, datasets and job artifacts, by kind.",
        labels=["kind"],
    )
    for kind, table in (("models", StoredModel), ("datasets", Dataset), ("artifacts", Artifact)):
        total = session.scalar(select(func.coalesce(func.sum(table.size_bytes), 0)))
        stored.add_metric([kind], float(total or 0))
    yield stored
