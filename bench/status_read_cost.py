"""CPU and wall time the API spends on one job-status read (`GET /v1/jobs/{id}`) and on a list
page (`GET /v1/jobs?page_size=100`), in process, on SQLite and on PostgreSQL.

    PYTHONPATH=$PWD .venv/bin/python bench/status_read_cost.py [--reads 3000] [--pages 200]
        [--database sqlite|postgresql|both] [--profile]

The app is the one `api.main` serves, started with its lifespan (the start-up `gc.freeze()`
included), JSON access lines written to /dev/null as in production, a live worker registered
for the `cpu` queue. It is driven through httpx's ASGI transport, in this process: the figures
include that client's own cost, which the `GET /healthz` line shows (a public route that
touches no database). The jobs are a prune + quantize job that succeeded with a result a real
worker wrote (tests/web/recorded/worker_results.json), and the same job still queued; the list
page holds 100 jobs, half of each.

CPU time is `time.process_time` (every thread of the process) per request, and on PostgreSQL
also the CPU time its server processes used meanwhile (from /proc), since the database takes
the same cores as the API; wall time is per request, p50 and p99. The parts of a read are then
timed alone. `--profile` runs the reads again with the threadpool inlined, so that
cProfile sees the route, and prints where the time goes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import logging
import os
import pstats
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from sqlalchemy import create_engine, make_url, text  # noqa: E402

from core.migrate import upgrade  # noqa: E402
from tests.conftest import ADMIN_KEY  # noqa: E402
from tests.ports import free_port  # noqa: E402
from tests.web.jobs_data import WORKER_RESULTS  # noqa: E402

LISTED_JOBS = 100


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@contextlib.contextmanager
def postgres_url() -> Iterator[str]:
    from tests.postgres import run_postgres

    with contextlib.contextmanager(run_postgres)(free_port()) as server:
        engine = create_engine(server, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text("CREATE DATABASE modelpress"))
        engine.dispose()
        url = server.rsplit("/", 1)[0] + "/modelpress"
        upgrade(url)
        yield url


def configure(data_dir: Path, database_url: str | None) -> None:
    from core.db import reset_engines
    from core.logs import configure_logging
    from core.queue import get_celery
    from core.settings import get_settings

    os.environ.update(
        {
            "MODELPRESS_DATA_DIR": str(data_dir),
            "MODELPRESS_METRICS_DIR": str(data_dir / "metrics"),
            "MODELPRESS_BOOTSTRAP_KEY": ADMIN_KEY,
            "MODELPRESS_LOG_FORMAT": "json",
            # The worker registered here beats once: it stays live for the whole run, so
            # every queued job's read asks for the live queues and finds the `cpu` queue served.
            "MODELPRESS_HEARTBEAT_TIMEOUT_S": "86400",
        }
    )
    os.environ.pop("MODELPRESS_BROKER_URL", None)
    if database_url:
        os.environ["MODELPRESS_DATABASE_URL"] = database_url
    else:
        os.environ.pop("MODELPRESS_DATABASE_URL", None)
    get_settings.cache_clear()
    get_celery.cache_clear()
    reset_engines()
    data_dir.mkdir(parents=True, exist_ok=True)
    if database_url is None:
        upgrade(f"sqlite:///{data_dir / 'modelpress.db'}")
    # One JSON access line per request, as `python -m api` writes them, to /dev/null.
    sys.stderr = open(os.devnull, "w")  # noqa: SIM115 (restored by main)
    configure_logging(get_settings())
    logging.getLogger("httpx").setLevel(logging.WARNING)  # the bench's client, not the API


def register_cpu_worker() -> None:
    from core import workers
    from core.db import new_id, session_factory

    with session_factory()() as session:
        workers.register(
            session,
            workers.Registration(
                id=new_id("wkr"),
                name="bench@host",
                host="host",
                pid=1,
                queues=["cpu"],
                refused={},
                cores=[0],
                device={"kind": "cpu"},
                versions={},
            ),
        )
        session.commit()


async def make_jobs(client: httpx.AsyncClient, folder: Path) -> tuple[str, str]:
    """100 jobs of the recorded spec, the first half finished with the recorded result: (a
    succeeded job's id, a queued job's id)."""
    from core import jobstate
    from core.db import session_factory
    from core.tables import JobStatus
    from tests.models.onnx_basic import make_dataset, make_mlp

    recorded = WORKER_RESULTS["faster"]
    model_path = make_mlp(folder / "mlp.onnx")
    with model_path.open("rb") as handle:
        model = (await client.post("/v1/models", files={"file": ("mlp.onnx", handle)})).json()
    data_path = make_dataset(folder / "data.npz", model_path)
    with data_path.open("rb") as handle:
        dataset = (await client.post("/v1/datasets", files={"file": ("data.npz", handle)})).json()
    spec = {key: value for key, value in recorded["spec"].items() if value is not None}
    spec["model_id"] = model["id"]
    spec["evaluate"] = {**spec["evaluate"], "dataset_id": dataset["id"]}
    answer = await client.post(
        "/v1/batches",
        json={"jobs": [{**spec, "labels": {"n": n}} for n in range(LISTED_JOBS)]},
    )
    assert answer.status_code == 202, answer.text[:500]
    ids = [job["id"] for job in answer.json()["jobs"]]
    with session_factory()() as session:
        for job_id in ids[: LISTED_JOBS // 2]:
            attempt = jobstate.claim(session, job_id, "bench-worker")
            assert attempt is not None
            assert jobstate.finish(
                session, job_id, attempt, status=JobStatus.succeeded, result=recorded["result"]
            )
        session.commit()
    return ids[0], ids[-1]


def postgres_cpu_s(port: int | None) -> float:
    """CPU seconds used so far by the PostgreSQL server on `port`: its postmaster and every
    process it started (a connection's backend does the work of that connection's queries),
    those that ended included (counted into the postmaster's children times)."""
    if port is None:
        return 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    stats = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        stats[int(entry.name)] = (int(fields[1]), fields, cmdline)
    postmaster = next(
        pid
        for pid, (_, _, cmdline) in stats.items()
        if cmdline.startswith(b"/usr/lib/postgresql/") and f"-p\x00{port}".encode() in cmdline
    )
    total = 0
    for pid, (parent, fields, _) in stats.items():
        if pid == postmaster or parent == postmaster:
            # utime, stime, cutime, cstime: fields 14-17 of /proc/<pid>/stat
            total += sum(int(value) for value in fields[11:15])
    return total / ticks


async def measure(
    client: httpx.AsyncClient,
    path: str,
    count: int,
    params: dict[str, Any] | None = None,
    *,
    postgres_port: int | None = None,
) -> dict[str, float]:
    for _ in range(min(50, count)):  # warm-up: first-call costs, caches
        assert (await client.get(path, params=params)).status_code == 200
    walls: list[float] = []
    server_began = postgres_cpu_s(postgres_port)
    cpu_began = time.process_time()
    began = time.perf_counter()
    for _ in range(count):
        one = time.perf_counter()
        response = await client.get(path, params=params)
        walls.append(time.perf_counter() - one)
        assert response.status_code == 200, response.text[:300]
    elapsed = time.perf_counter() - began
    cpu = time.process_time() - cpu_began
    server = postgres_cpu_s(postgres_port) - server_began
    return {
        "cpu_ms": cpu / count * 1000,
        "db_cpu_ms": server / count * 1000,
        "wall_ms": elapsed / count * 1000,
        "p50_ms": percentile(walls, 0.5) * 1000,
        "p99_ms": percentile(walls, 0.99) * 1000,
        "bytes": len(response.content),
    }


def cpu_us(call: Callable[[], object], count: int) -> float:
    for _ in range(min(50, count)):
        call()
    began = time.process_time()
    for _ in range(count):
        call()
    return (time.process_time() - began) / count * 1e6


def component_costs(succeeded: str, queued: str, count: int) -> None:
    """The parts of a status read, each alone, in this thread: CPU microseconds per call."""
    from api import schemas
    from api.deps import live_queues
    from api.middleware import _look_up
    from api.results import typed_result
    from core.db import session_factory
    from core.tables import Job

    def get_row(job_id: str) -> Job:
        with session_factory()() as session:
            row = session.get(Job, job_id)
            assert row is not None
            return row

    def live() -> None:
        with session_factory()() as session:
            len(live_queues(session))

    done, waiting = get_row(succeeded), get_row(queued)
    served = frozenset({"cpu"})
    answer = schemas.JobOut.of(done, live_queues=served)
    parts: list[tuple[str, Callable[[], object]]] = [
        ("key lookup (a session, one query)", lambda: _look_up(ADMIN_KEY)),
        ("job row by id (a session, one query)", lambda: get_row(succeeded)),
        ("live queues (a session, one query)", live),
        ("JobOut.of, succeeded job", lambda: schemas.JobOut.of(done, live_queues=served)),
        ("JobOut.of, queued job", lambda: schemas.JobOut.of(waiting, live_queues=served)),
        ("  spec with defaults", lambda: schemas._with_defaults(done.spec)),
        ("  typed result", lambda: typed_result(done.result)),
        ("  summary", lambda: schemas.JobSummary.of(done.result)),
        ("JSON of a succeeded job's answer", answer.model_dump_json),
    ]
    for label, call in parts:
        print(f"    {label:<40} {cpu_us(call, count):8.1f} us", file=sys.__stdout__, flush=True)


@contextlib.asynccontextmanager
async def running_app() -> AsyncIterator[httpx.AsyncClient]:
    from api.main import create_app

    app = create_app()
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport,
            base_url="http://bench",
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        ) as client:
            yield client


@contextlib.contextmanager
def inlined_threadpool() -> Iterator[None]:
    """Sync routes and dependencies run in this thread, where cProfile sees them."""
    import anyio.to_thread

    original = anyio.to_thread.run_sync

    async def inline(func: Callable[..., Any], *args: Any, **_: Any) -> Any:
        return func(*args)

    anyio.to_thread.run_sync = inline  # type: ignore[assignment]
    try:
        yield
    finally:
        anyio.to_thread.run_sync = original  # type: ignore[assignment]


async def run(
    database: str, database_url: str | None, folder: Path, args: argparse.Namespace
) -> None:
    configure(folder / "data", database_url)
    postgres_port = make_url(database_url).port if database_url else None
    register_cpu_worker()
    async with running_app() as client:
        succeeded, queued = await make_jobs(client, folder)
        routes: list[tuple[str, str, dict[str, Any] | None, int]] = [
            ("GET /healthz (client + middleware floor)", "/healthz", None, args.reads),
            ("GET /v1/jobs/{id} succeeded", f"/v1/jobs/{succeeded}", None, args.reads),
            ("GET /v1/jobs/{id} queued", f"/v1/jobs/{queued}", None, args.reads),
            ("GET /v1/jobs?page_size=100", "/v1/jobs", {"page_size": 100}, args.pages),
        ]
        print(f"{database}:", file=sys.__stdout__)
        for label, path, params, count in routes:
            got = await measure(client, path, count, params, postgres_port=postgres_port)
            server = f", PostgreSQL {got['db_cpu_ms']:.2f}" if postgres_port else ""
            print(
                f"  {label:<42} CPU {got['cpu_ms']:7.2f}{server} ms/request,"
                f" wall {got['wall_ms']:7.2f}"
                f" ms (p50 {got['p50_ms']:.2f}, p99 {got['p99_ms']:.2f}), {count} requests,"
                f" {got['bytes']:,} bytes",
                file=sys.__stdout__,
                flush=True,
            )
        print("  parts of a read, CPU per call:", file=sys.__stdout__)
        component_costs(succeeded, queued, args.reads)
        if args.profile:
            for label, path, params, count in routes[1:]:
                profiler = cProfile.Profile()
                with inlined_threadpool():
                    profiler.enable()
                    for _ in range(min(count, 500)):
                        await client.get(path, params=params)
                    profiler.disable()
                print(f"\n  profile of {label} ({min(count, 500)} requests):", file=sys.__stdout__)
                stats = pstats.Stats(profiler, stream=sys.__stdout__)
                stats.sort_stats(args.profile_sort).print_stats(args.profile_lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reads", type=int, default=3000, help="Status reads per job.")
    parser.add_argument("--pages", type=int, default=200, help="List pages of 100.")
    parser.add_argument("--database", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--profile-lines", type=int, default=45)
    parser.add_argument("--profile-sort", choices=["cumulative", "tottime"], default="cumulative")
    args = parser.parse_args()
    databases = ["sqlite", "postgresql"] if args.database == "both" else [args.database]
    stderr = sys.stderr
    try:
        for database in databases:
            with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
                url = stack.enter_context(postgres_url()) if database == "postgresql" else None
                asyncio.run(run(database, url, Path(tmp), args))
    finally:
        sys.stderr = stderr


if __name__ == "__main__":
    main()
