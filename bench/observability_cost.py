"""What observing the service costs: the request layer's time per request (request id, access
log line, latency histogram), and the time to answer a Prometheus scrape of a busy database.

    .venv/bin/python bench/observability_cost.py [--jobs 10000] [--requests 20000] [--scrapes 20]

The first number runs the layer (api.request_context) around an app that answers at once, in
process, against the same app without it. The second starts a real API process on a SQLite
database holding `--jobs` jobs and times GET /metrics over HTTP.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from tests.conftest import ADMIN_KEY  # noqa: E402
from tests.integration.processes import run_service  # noqa: E402


def layer_cost_us(requests: int) -> tuple[float, float]:
    from api.main import create_app
    from api.request_context import RequestContext, route_templates
    from core.logs import configure_logging
    from core.settings import Settings

    app = create_app()

    async def bare(scope, receive, send):  # type: ignore[no-untyped-def]
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    wrapped = RequestContext(bare, templates=route_templates(app))

    async def drive(asgi) -> float:  # type: ignore[no-untyped-def]
        async def receive():  # type: ignore[no-untyped-def]
            return {"type": "http.request", "body": b""}

        async def send(message):  # type: ignore[no-untyped-def]
            return None

        began = time.perf_counter()
        for index in range(requests):
            scope = {
                "type": "http",
                "method": "GET",
                # The last route of the list: the longest search for its template.
                "path": f"/v1/jobs/job_{index}/events",
                "headers": [(b"x-request-id", b"bench-1")],
                "query_string": b"",
            }
            await asgi(scope, receive, send)
        return (time.perf_counter() - began) / requests * 1e6

    # The access line is written as in production (JSON), to a file rather than a terminal.
    stderr = sys.stderr
    with open(os.devnull, "w") as sys.stderr:
        configure_logging(Settings(log_format="json"))
        bare_us = asyncio.run(drive(bare))
        layered_us = asyncio.run(drive(wrapped))
    sys.stderr = stderr
    logging.getLogger().handlers.clear()
    return bare_us, layered_us


def add_jobs(database: Path, count: int) -> None:
    from sqlalchemy import insert, select

    from core.db import session_scope
    from core.tables import Job, Project

    url = f"sqlite:///{database}"
    now = datetime.now(UTC)
    statuses = ["queued", "running", "succeeded", "failed", "canceled"]
    with session_scope(url) as session:
        project = session.scalar(select(Project.id).limit(1))
        session.execute(
            insert(Job),
            [
                {
                    "id": f"job_bench{index:08d}",
                    "project_id": project,
                    "spec": {},
                    "queue": "cpu" if index % 4 else "gpu",
                    "status": statuses[index % len(statuses)],
                    "created_at": now,
                    "queued_at": now - timedelta(seconds=index),
                    "updated_at": now,
                }
                for index in range(count)
            ],
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--scrapes", type=int, default=20)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        os.environ["MODELPRESS_DATA_DIR"] = str(Path(tmp) / "inprocess")
        bare_us, layered_us = layer_cost_us(args.requests)
        print(
            f"request layer: {layered_us - bare_us:.1f} us per request "
            f"({bare_us:.1f} us bare app, {layered_us:.1f} us with the layer; "
            f"{args.requests} requests)"
        )

        service = stack.enter_context(
            contextlib.closing(run_service(Path(tmp) / "service", None, with_worker=False))
        )
        api = next(service)
        add_jobs(Path(tmp) / "service" / "data" / "modelpress.db", args.jobs)
        headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
        with httpx.Client(base_url=api.base_url, headers=headers, timeout=60) as client:
            client.get("/metrics").raise_for_status()
            times = []
            for _ in range(args.scrapes):
                began = time.perf_counter()
                client.get("/metrics").raise_for_status()
                times.append((time.perf_counter() - began) * 1000)
        times.sort()
        print(
            f"GET /metrics with {args.jobs} jobs: p50 {statistics.median(times):.1f} ms, "
            f"max {times[-1]:.1f} ms ({args.scrapes} scrapes)"
        )


if __name__ == "__main__":
    main()
