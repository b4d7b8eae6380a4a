"""Latency of `GET /v1/jobs/{id}` with and without hundreds of open job event streams.

    .venv/bin/python bench/api_streams.py [--streams 200] [--requests 500]

Starts a real API process (uvicorn, SQLite, local storage, embedded broker, no worker, as
the tests do), uploads a model and submits a job that stays queued, then times sequential
requests over one kept-alive connection: first alone, then while another process holds
`--streams` event streams of that job open. Prints p50/p90/p99 in ms for both.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import sys
import tempfile
import time
from multiprocessing.synchronize import Event
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import ADMIN_KEY  # noqa: E402
from tests.integration.processes import Service, run_service  # noqa: E402
from tests.models.onnx_basic import make_mlp  # noqa: E402

AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}


def submit_job(service: Service, folder: Path) -> str:
    model_path = make_mlp(folder / "m.onnx")
    with service.client() as client, model_path.open("rb") as handle:
        model = client.post("/v1/models", files={"file": ("m.onnx", handle)})
        model.raise_for_status()
        spec = {
            "model_id": model.json()["id"],
            "passes": [{"kind": "quantize", "method": "dynamic"}],
        }
        job = client.post("/v1/jobs", json=spec)
        job.raise_for_status()
        return str(job.json()["id"])


def hold_streams(base_url: str, job_id: str, count: int, ready: Event, stop: Event) -> None:
    """In its own process, so that the client side of the streams takes nothing from the
    process that times the requests."""

    async def one(client: httpx.AsyncClient, opened: asyncio.Event) -> None:
        async with client.stream("GET", f"/v1/jobs/{job_id}/events") as response:
            response.raise_for_status()
            async for line in response.aiter_lines():
                if line == "event: job":
                    opened.set()

    async def main() -> None:
        limits = httpx.Limits(max_connections=count + 10, max_keepalive_connections=0)
        async with httpx.AsyncClient(
            base_url=base_url, headers=AUTH, limits=limits, timeout=None
        ) as client:
            opened = [asyncio.Event() for _ in range(count)]
            tasks = [asyncio.create_task(one(client, event)) for event in opened]
            await asyncio.gather(*(event.wait() for event in opened))
            ready.set()
            while not stop.is_set():
                await asyncio.sleep(0.2)
            failed = [t for t in tasks if t.done()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if failed:
                raise SystemExit(f"{len(failed)} streams ended before the measurement did")

    asyncio.run(main())


def time_requests(base_url: str, job_id: str, count: int) -> list[float]:
    timings = []
    with httpx.Client(base_url=base_url, headers=AUTH, timeout=60) as client:
        for _ in range(20):  # a warm connection and warm caches
            client.get(f"/v1/jobs/{job_id}").raise_for_status()
        for _ in range(count):
            began = time.perf_counter()
            response = client.get(f"/v1/jobs/{job_id}")
            timings.append((time.perf_counter() - began) * 1000)
            response.raise_for_status()
            assert response.json()["id"] == job_id
    return timings


def summary(label: str, timings: list[float]) -> str:
    q = statistics.quantiles(timings, n=100, method="inclusive")
    return (
        f"{label:<32} n={len(timings)}  p50 {q[49]:7.2f} ms  p90 {q[89]:7.2f} ms  "
        f"p99 {q[98]:7.2f} ms  max {max(timings):7.2f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--requests", type=int, default=500)
    args = parser.parse_args()
    env = {"MODELPRESS_EVENTS_POLL_S": "1", "MODELPRESS_EVENTS_STREAM_S": "3600"}
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        for service in run_service(tmp_path, None, env, with_worker=False):
            job_id = submit_job(service, tmp_path)
            alone = time_requests(service.base_url, job_id, args.requests)

            ready, stop = multiprocessing.Event(), multiprocessing.Event()
            holder = multiprocessing.Process(
                target=hold_streams,
                args=(service.base_url, job_id, args.streams, ready, stop),
            )
            holder.start()
            began = time.perf_counter()
            if not ready.wait(300):
                holder.terminate()
                raise SystemExit(f"{args.streams} streams did not all open within 300 s")
            opened_s = time.perf_counter() - began
            loaded = time_requests(service.base_url, job_id, args.requests)
            stop.set()
            holder.join(60)
            if holder.exitcode != 0:
                raise SystemExit("the streams did not all stay open while requests were timed")

    print("GET /v1/jobs/{id}, SQLite, one API process, event streams polling every 1 s")
    print(summary("no event streams", alone))
    print(summary(f"{args.streams} open event streams", loaded))
    print(f"all {args.streams} streams had their first event {opened_s:.1f} s after opening")
    p99 = statistics.quantiles(loaded, n=100, method="inclusive")[98]
    print(f"goal p99 < 100 ms with {args.streams} streams: {'MET' if p99 < 100 else 'NOT MET'}")


if __name__ == "__main__":
    main()
