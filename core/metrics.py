"""Prometheus metrics that the processes observe about themselves (HTTP requests, jobs,
heartbeats), kept in prometheus-client's multiprocess files: a scrape sums every API and worker
process of the machine, whichever process answers it. What the database knows (jobs by status,
queues, stored bytes) is read at scrape time instead (core.db_metrics)."""

from __future__ import annotations

import errno
import logging
import os
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    values,
)
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from core.settings import Settings, get_settings

log = logging.getLogger(__name__)

CONTENT_TYPE = CONTENT_TYPE_LATEST
#: prometheus-client's variable: where this process writes its metric files.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: The files of one process end with its pid: `counter_1234.db`, `gauge_livemax_1234.db`.
_FILE_PID = re.compile(r"_(\d+)\.db$")

_SECONDS_TO_HOURS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 21600)
_WAIT_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200)


def prepare_metrics_dir(settings: Settings) -> Path:
    """Makes MODELPRESS_METRICS_DIR the place where this process keeps its metrics; called as
    a process starts (the API, the worker before it forks its pool).

    Files of processes that have ended are dealt with as prometheus-client advises: when no
    process that wrote there is alive, this is a fresh start and every file goes (counters
    start again at zero, which Prometheus reads as a restart); otherwise only their live
    gauges go (`mark_process_dead`) and their counts stay in the sums."""
    directory = settings.resolved_metrics_dir
    directory.mkdir(parents=True, exist_ok=True)
    os.environ[MULTIPROC_ENV] = str(directory)
    if values.ValueClass is values.MutexValue:
        # prometheus-client chose its mode when it was imported, before the variable was set.
        values.ValueClass = values.MultiProcessValue()
    _clear_ended_processes(directory)
    return directory


def _clear_ended_processes(directory: Path) -> None:
    files: dict[int, list[Path]] = {}
    for path in directory.glob("*.db"):
        found = _FILE_PID.search(path.name)
        if found:
            files.setdefault(int(found.group(1)), []).append(path)
    ended = [pid for pid in files if not _alive(pid)]
    if len(ended) == len(files):
        for pid in ended:
            for path in files[pid]:
                path.unlink(missing_ok=True)
        return
    for pid in ended:
        mark_process_dead(pid, str(directory))


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno == errno.EPERM  # alive, another user's
    return True


def process_ended(pid: int) -> None:
    """A process of this machine ended (a worker's pool process): its live gauges go."""
    directory = os.environ.get(MULTIPROC_ENV)
    if directory:
        mark_process_dead(pid, directory)


@dataclass(frozen=True)
class _Metrics:
    http_duration: Histogram
    job_duration: Histogram
    pass_duration: Histogram
    queue_wait: Histogram
    heartbeats: Counter
    last_heartbeat: Gauge


@cache
def _metrics() -> _Metrics:
    if MULTIPROC_ENV not in os.environ or values.ValueClass is values.MutexValue:
        prepare_metrics_dir(get_settings())
    # Kept out of the default registry: a scrape reads the files of every process (render).
    return _Metrics(
        http_duration=Histogram(
            "modelpress_http_request_duration_seconds",
            "Time to answer an HTTP request (for a stream, to its end), by route template and "
            "status class.",
            ["method", "route", "status_class"],
            registry=None,
        ),
        job_duration=Histogram(
            "modelpress_job_duration_seconds",
            "Time from a worker's claim of a job to its final state, by queue, final status "
            "and the kinds of passes the job runs (sorted, joined by '+').",
            ["queue", "status", "passes"],
            buckets=_SECONDS_TO_HOURS,
            registry=None,
        ),
        pass_duration=Histogram(
            "modelpress_pass_duration_seconds",
            "Time one pass of a succeeded job took, by pass kind and method.",
            ["kind", "method"],
            buckets=_SECONDS_TO_HOURS,
            registry=None,
        ),
        queue_wait=Histogram(
            "modelpress_job_queue_wait_seconds",
            "Time a job waited between being queued and a worker claiming it, by queue.",
            ["queue"],
            buckets=_WAIT_BUCKETS,
            registry=None,
        ),
        heartbeats=Counter(
            "modelpress_worker_heartbeats",
            "Heartbeats a worker process wrote for the jobs it runs.",
            ["worker"],
            registry=None,
        ),
        last_heartbeat=Gauge(
            "modelpress_worker_last_heartbeat_timestamp_seconds",
            "When a live worker process last wrote a heartbeat (Unix time).",
            ["worker"],
            multiprocess_mode="livemax",
            registry=None,
        ),
    )


def observe_http(*, method: str, route: str, status: int, seconds: float) -> None:
    _metrics().http_duration.labels(method, route, f"{status // 100}xx").observe(seconds)


def observe_queue_wait(*, queue: str, seconds: float) -> None:
    _metrics().queue_wait.labels(queue).observe(max(seconds, 0.0))


def observe_job(*, queue: str, status: str, passes: str, seconds: float) -> None:
    _metrics().job_duration.labels(queue, status, passes).observe(seconds)


def observe_pass(*, kind: str, method: str, seconds: float) -> None:
    _metrics().pass_duration.labels(kind, method).observe(seconds)


def observe_heartbeat(*, worker: str, at: float) -> None:
    metrics = _metrics()
    metrics.heartbeats.labels(worker).inc()
    metrics.last_heartbeat.labels(worker).set(at)


def process_registry(settings: Settings) -> CollectorRegistry:
    """What the processes of this machine observed, summed over their files."""
    directory = settings.resolved_metrics_dir
    directory.mkdir(parents=True, exist_ok=True)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
