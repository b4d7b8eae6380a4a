"""Jobs per minute through one, then two CPU workers on disjoint cores, the API's status reads
while they run, and the API's reads with 10,000 jobs queued.

    PYTHONPATH=$PWD .venv/bin/python bench/throughput.py [--jobs 500] [--clients 50]

The production shape on one machine: PostgreSQL and Redis (started here, as the tests start
them), one API process, workers pinned to cores of their own (MODELPRESS_CPUS where the
worker has that setting, else `taskset -c`). Each phase submits `--jobs` short jobs in one
batch (dynamic int8 quantization of a 16-64-4 MLP, benchmark at batch 1 with 2 warm-up and
10 timed iterations) and waits for all of them, while `--clients` threads each read a random
job's status every `--poll` seconds (2 s, the rate at which this service's own clients
poll). Then the workers stop, 10,000 queued jobs are inserted straight into the database,
and the same clients read their statuses, then one client pages through the job list.
Prints jobs per minute, queue wait (created -> started) p50/p99, and the API's p50/p99 for
each kind of read.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402

from core.migrate import upgrade  # noqa: E402
from core.settings import Settings  # noqa: E402
from tests.integration.processes import (  # noqa: E402
    ADMIN_KEY,
    BIN,
    Process,
    Service,
    run_redis,
    run_service,
    start,
    wait_until,
)
from tests.models.onnx_basic import make_mlp  # noqa: E402
from tests.ports import free_port  # noqa: E402
from tests.postgres import run_postgres  # noqa: E402

RECIPE: dict[str, Any] = {
    "passes": [{"kind": "quantize", "method": "dynamic"}],
    "benchmark": {"batch_sizes": [1], "warmup": 2, "iterations": 10, "threads": 1},
}
QUEUED_ROWS = 10_000


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def ms(values: list[float]) -> str:
    if not values:
        return "no reads"
    return (
        f"p50 {percentile(values, 0.5) * 1000:.1f} ms, p99 {percentile(values, 0.99) * 1000:.1f} ms"
        f" ({len(values)} reads)"
    )


class Readers:
    """`count` threads, each reading a random job's status every `interval` seconds."""

    def __init__(self, service: Service, *, count: int, interval: float) -> None:
        self.service, self.count, self.interval = service, count, interval
        self.ids: list[str] = []
        self.latencies: list[float] = []
        #: The same reads as the API timed them (its access log): from its first middleware
        #: to the last byte handed to the server, without the network, the server's parsing
        #: and the clients' own time.
        self.server_latencies: list[float] = []
        self.errors = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def _read(self, seed: int) -> None:
        rng = random.Random(seed)
        # Each client keeps its connection, as a polling program does (httpx's default); a
        # new connection per read would time the TCP handshake and the server's setup of a
        # connection as much as the read. Reads come more often than uvicorn's 5 s keep-alive
        # ends an idle connection (`--poll` stays under 3 s).
        with httpx.Client(
            base_url=self.service.base_url,
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
            timeout=30,
        ) as client:
            # Clients start spread over one interval, as they read after it: all 50 asking
            # in the same millisecond would measure a burst that no other moment has.
            self._stop.wait(self.interval * rng.random())
            while not self._stop.is_set():
                if self.ids:
                    job_id = rng.choice(self.ids)
                    began = time.perf_counter()
                    try:
                        ok = client.get(f"/v1/jobs/{job_id}").status_code == 200
                    except httpx.HTTPError:
                        ok = False
                    took = time.perf_counter() - began
                    with self._lock:
                        if ok:
                            self.latencies.append(took)
                        else:
                            self.errors += 1
                # Spread the clients so that they do not all ask at once.
                self._stop.wait(self.interval * rng.uniform(0.5, 1.5))

    @contextlib.contextmanager
    def running(self, ids: list[str]) -> Iterator[Readers]:
        self.ids, self.latencies, self.errors = ids, [], 0
        access_log = self.service.logs / "api.log"
        offset = access_log.stat().st_size
        self._stop.clear()
        self._threads = [
            threading.Thread(target=self._read, args=(n,), daemon=True) for n in range(self.count)
        ]
        for thread in self._threads:
            thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            for thread in self._threads:
                thread.join(60)
            self.server_latencies = status_reads_as_timed(access_log, offset)


def status_reads_as_timed(access_log: Path, offset: int) -> list[float]:
    """Seconds of each `GET /v1/jobs/{job_id}` answered 200, from the API's JSON access lines
    written after `offset`."""
    with access_log.open("rb") as handle:
        handle.seek(offset)
        lines = handle.read().decode(errors="replace").splitlines()
    found = []
    for line in lines:
        if '"modelpress.access"' not in line:
            continue
        entry = json.loads(line[line.index("{") :])
        if (entry.get("method"), entry.get("route"), entry.get("status")) == (
            "GET",
            "/v1/jobs/{job_id}",
            200,
        ):
            found.append(entry["duration_ms"] / 1000)
    return found


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class CpuUse:
    """CPU seconds taken by each part of the service during a phase, read from /proc.

    On two cores every part takes its share from the workers, so the bench says where the
    time went: the workers (with their job processes), the API, PostgreSQL, Redis, this
    process (its reading clients) and the rest of the machine. A process's figure includes
    its children that have ended (`cutime`), which is where a worker's finished job
    processes and PostgreSQL's closed connections count.
    """

    def __init__(self, roots: dict[str, int]) -> None:
        self.roots = {pid: name for name, pid in roots.items()}
        self._began = self._sample()

    def _sample(self) -> dict[str, float]:
        stats: dict[int, tuple[str, int, float]] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                raw = (entry / "stat").read_text()
            except OSError:
                continue  # ended while read
            # The command name is in parentheses and may itself hold spaces.
            comm = raw[raw.index("(") + 1 : raw.rindex(")")]
            fields = raw[raw.rindex(")") + 2 :].split()
            ticks = sum(int(v) for v in fields[11:15])  # utime stime cutime cstime
            stats[int(entry.name)] = (comm, int(fields[1]), ticks / CLOCK_TICKS)
        groups: dict[str, float] = {}
        for pid, (comm, _, seconds) in stats.items():
            if pid == os.getpid():
                group = "bench (readers)"
                seconds = sum(os.times()[:2])  # its own threads, not its children
            elif comm.startswith("postgres"):
                group = "postgres"
            elif comm.startswith("redis"):
                group = "redis"
            else:
                ancestor = pid
                while ancestor in stats and ancestor not in self.roots:
                    ancestor = stats[ancestor][1]
                group = self.roots.get(ancestor, "other")
            groups[group] = groups.get(group, 0.0) + seconds
        with open("/proc/stat") as handle:
            busy = [int(v) for v in handle.readline().split()[1:8]]
        groups["machine"] = (sum(busy) - busy[3] - busy[4]) / CLOCK_TICKS  # less idle, iowait
        return groups

    def since_start(self) -> dict[str, float]:
        now = self._sample()
        spent = {name: now.get(name, 0.0) - self._began.get(name, 0.0) for name in now}
        # Processes that ended during the phase leave the sample: never report below zero.
        return {name: max(0.0, seconds) for name, seconds in spent.items()}


def start_worker(service: Service, name: str, cores: str) -> Process:
    """A worker pinned to `cores`: by its own setting where it has one, else by taskset."""
    env = dict(service.env)
    command = [str(BIN / "celery"), "-A", "worker.celery_app", "worker", "-Q", "cpu"]
    command += ["--loglevel", "INFO", "-n", f"{name}@%h"]
    if "cpus" in Settings.model_fields:
        env["MODELPRESS_CPUS"] = cores
    else:
        command = ["taskset", "-c", cores, *command]
    proc = start(name, command, env, service.logs)
    service.processes[name] = proc
    wait_until(
        lambda: "ready." in proc.output() or proc.popen.poll() is not None,
        600,  # the worker preloads torch: minutes on a busy 2-core machine
        f"{name} to be ready",
    )
    if proc.popen.poll() is not None:
        raise RuntimeError(f"{name} exited:\n{proc.output()[-3000:]}")
    return proc


def run_phase(
    service: Service, readers: Readers, *, model_id: str, jobs: int, label: str
) -> dict[str, Any]:
    specs = [{"model_id": model_id, **RECIPE, "labels": {"n": n}} for n in range(jobs)]
    roots = {name: proc.popen.pid for name, proc in service.processes.items()}
    with service.client() as client:
        cpu = CpuUse(roots)
        began = time.monotonic()
        answer = client.post("/v1/batches", json={"name": label, "jobs": specs}, timeout=300)
        assert answer.status_code == 202, answer.text[:500]
        batch_id = answer.json()["id"]
        ids = [job["id"] for job in answer.json()["jobs"]]
        with readers.running(ids):
            # The newest batch's counts (the list's summary, one grouped count) tell when it
            # is done; the whole batch, every job typed, is read once at the end: read each
            # second, its 500 jobs would take a share of the API's CPU that belongs to no
            # user's read.
            while True:
                newest = client.get("/v1/batches", params={"page_size": 1}, timeout=60).json()
                summary = newest["items"][0]
                assert summary["id"] == batch_id, summary
                if summary["status"] not in ("queued", "running"):
                    break
                time.sleep(1.0)
        elapsed = time.monotonic() - began
        cpu_seconds = cpu.since_start()
        batch = client.get(f"/v1/batches/{batch_id}", timeout=60).json()
        states = [job["status"] for job in batch["jobs"]]
    waits = [
        (
            datetime.fromisoformat(j["started_at"]) - datetime.fromisoformat(j["created_at"])
        ).total_seconds()
        for j in batch["jobs"]
        if j["started_at"]
    ]
    # The service's own clock for the span: from the first job created to the last one
    # finished, free of this loop's one-second polling.
    span = (
        max(datetime.fromisoformat(j["finished_at"]) for j in batch["jobs"])
        - min(datetime.fromisoformat(j["created_at"]) for j in batch["jobs"])
    ).total_seconds()
    return {
        "label": label,
        "elapsed": elapsed,
        "span": span,
        "per_minute": jobs / span * 60,
        "cpu": cpu_seconds,
        "succeeded": states.count("succeeded"),
        "failed": [j.get("error") for j in batch["jobs"] if j["status"] != "succeeded"][:3],
        "waits": waits,
        "reads": list(readers.latencies),
        "server_reads": list(readers.server_latencies),
        "read_errors": readers.errors,
    }


def insert_queued_jobs(database_url: str, count: int) -> list[str]:
    """`count` queued jobs copied from a finished one, written straight into the database (no
    broker message: they only need to be read)."""
    engine = create_engine(database_url)
    with engine.begin() as conn:
        conn.execute(
            text(
                """
                INSERT INTO jobs (id, project_id, model_id, spec, dataset_ids, extra_model_ids,
                    queue, status, progress, progress_message, attempts, max_attempts,
                    created_at, queued_at, updated_at)
                SELECT 'job_' || md5('queued' || g), j.project_id, j.model_id, j.spec,
                    j.dataset_ids, j.extra_model_ids, j.queue, 'queued', 0.0,
                    'waiting for a worker', 0, j.max_attempts,
                    now() - g * interval '1 millisecond', now(), now()
                FROM generate_series(1, :count) AS g,
                    (SELECT * FROM jobs ORDER BY created_at LIMIT 1) AS j
                """
            ),
            {"count": count},
        )
        ids = [row[0] for row in conn.execute(text("SELECT id FROM jobs WHERE status = 'queued'"))]
    engine.dispose()
    return ids


def timed_pages(service: Service, *, pages: int, params: dict[str, Any]) -> list[float]:
    latencies: list[float] = []
    token = None
    with service.client() as client:
        for _ in range(pages):
            query = dict(params, page_size=100)
            if token:
                query["page_token"] = token
            began = time.perf_counter()
            page = client.get("/v1/jobs", params=query)
            latencies.append(time.perf_counter() - began)
            assert page.status_code == 200, page.text[:300]
            token = page.json()["next_page_token"]
    return latencies


def report_phase(phase: dict[str, Any], clients: int) -> None:
    waits = phase["waits"]
    print(
        f"{phase['label']}: {phase['succeeded']} succeeded in {phase['span']:.1f} s "
        f"(first created to last finished; {phase['elapsed']:.1f} s as polled) -> "
        f"{phase['per_minute']:.1f} jobs/min; queue wait p50 {percentile(waits, 0.5):.1f} s, "
        f"p99 {percentile(waits, 0.99):.1f} s"
    )
    cpu, elapsed = phase["cpu"], phase["elapsed"]
    parts = ", ".join(
        f"{name} {seconds:.1f} s ({seconds / elapsed:.2f} cores)"
        for name, seconds in sorted(cpu.items(), key=lambda item: -item[1])
        if name != "machine"
    )
    print(f"  CPU: machine {cpu['machine']:.1f} s ({cpu['machine'] / elapsed:.2f} cores): {parts}")
    if phase["failed"]:
        print(f"  not succeeded (first 3): {phase['failed']}")
    print(
        f"  status reads from {clients} clients meanwhile: {ms(phase['reads'])}, "
        f"{phase['read_errors']} errors; as the API timed them: {ms(phase['server_reads'])}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=500, help="Jobs per phase (at most 1000).")
    parser.add_argument("--clients", type=int, default=50, help="Concurrent status readers.")
    parser.add_argument(
        "--poll",
        type=float,
        default=2.0,
        help="Seconds between a client's reads (default: every 2 s, as the Python client's "
        "`poll` and the dashboard's live pages read a job; 1 doubles the rate).",
    )
    parser.add_argument("--read-seconds", type=float, default=20.0, help="With 10,000 queued.")
    parser.add_argument(
        "--pages", type=int, default=100, help="List pages read with 10,000 queued."
    )
    args = parser.parse_args()
    if not 1 <= args.jobs <= 1000:
        parser.error("--jobs: 1 to 1000 (one batch)")
    if not 0 < args.poll < 3:
        parser.error("--poll: under 3 s, so that a client's connection stays open")
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        parser.error("two cores are needed for two workers on disjoint cores")
    if "cpus" not in Settings.model_fields and shutil.which("taskset") is None:
        parser.error("taskset (util-linux) is needed to pin the workers")

    began = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        tmp_path = Path(tmp)
        server = stack.enter_context(contextlib.contextmanager(run_postgres)(free_port()))
        engine = create_engine(server, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text("CREATE DATABASE modelpress"))
        engine.dispose()
        database_url = server.rsplit("/", 1)[0] + "/modelpress"
        upgrade(database_url)
        broker = stack.enter_context(contextlib.contextmanager(run_redis)(tmp_path))
        env = {
            "MODELPRESS_DATABASE_URL": database_url,
            "MODELPRESS_HEARTBEAT_INTERVAL_S": "2",
            # As in production: one JSON line per request, which is also how the bench
            # reads the API's own timing of each status read.
            "MODELPRESS_LOG_FORMAT": "json",
        }
        service = stack.enter_context(
            contextlib.contextmanager(run_service)(tmp_path, broker, env, with_worker=False)
        )
        readers = Readers(service, count=args.clients, interval=args.poll)
        model_path = make_mlp(tmp_path / "mlp.onnx")
        with service.client() as client, model_path.open("rb") as handle:
            model = client.post("/v1/models", files={"file": ("mlp.onnx", handle)}).json()
        pinning = "MODELPRESS_CPUS" if "cpus" in Settings.model_fields else "taskset -c"
        print(f"cores {cores}; workers pinned with {pinning}; {args.jobs} jobs per phase")

        start_worker(service, "worker-a", str(cores[0]))
        one = run_phase(service, readers, model_id=model["id"], jobs=args.jobs, label="1 worker")
        report_phase(one, args.clients)
        start_worker(service, "worker-b", str(cores[1]))
        two = run_phase(service, readers, model_id=model["id"], jobs=args.jobs, label="2 workers")
        report_phase(two, args.clients)
        for name in ("worker-a", "worker-b"):
            service.processes[name].stop()

        queued = insert_queued_jobs(database_url, QUEUED_ROWS)
        with readers.running(queued):
            time.sleep(args.read_seconds)
        print(
            f"{len(queued)} queued jobs in the database: status reads from {args.clients} "
            f"clients: {ms(readers.latencies)}, {readers.errors} errors; as the API timed them: "
            f"{ms(readers.server_latencies)}"
        )
        newest = timed_pages(service, pages=args.pages, params={})
        print(f"  list pages of 100, newest first: {ms(newest)}")
        waiting = timed_pages(service, pages=args.pages, params={"status": "queued"})
        print(f"  list pages of 100, status=queued: {ms(waiting)}")
    print(f"whole run: {(time.monotonic() - began) / 60:.1f} min")


if __name__ == "__main__":
    main()
