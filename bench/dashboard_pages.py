"""Server time of the dashboard's job list and job pages with 10,000 jobs in the database.

    .venv/bin/python bench/dashboard_pages.py [--jobs 10000] [--requests 200]
        [--backend sqlite|postgres|both]

For each database (SQLite, and PostgreSQL from Debian's package as the tests start it) it
starts a real API process (uvicorn, as the tests do; no worker), uploads one model through
/v1, inserts `--jobs` jobs of one project directly into its database (mostly succeeded,
with a result of the shape the worker stores: both models' sizes, latency percentiles and
throughput for batch sizes 1, 8 and 32, memory, accuracy, fidelity, the comparison and
verdict, the benchmark and environment records, one stage per pass), signs in with a
dashboard session as a browser does and times `--requests` sequential GETs of `/jobs` and
of `/jobs/{id}` of a succeeded job over one kept-alive loopback connection. Prints
p50/p95/p99 in ms (the goal: p95 under 200 ms) and the API process's CPU time per request,
which a busy machine inflates less than the wall time.
A page the app does not serve (404) is reported as absent rather than timed.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import ADMIN_KEY  # noqa: E402
from tests.models.onnx_basic import make_mlp  # noqa: E402

BATCHES = ("1", "8", "32")


def _latency(rng: random.Random, base: float) -> dict[str, float]:
    p50 = base * rng.uniform(0.9, 1.1)
    return {
        "p50": round(p50, 4),
        "p90": round(p50 * 1.08, 4),
        "p95": round(p50 * 1.12, 4),
        "p99": round(p50 * 1.3, 4),
        "mean": round(p50 * 1.03, 4),
    }


def _measured(rng: random.Random, *, size: int, speed: float, accuracy: float) -> dict[str, Any]:
    latency = {b: _latency(rng, 0.05 * int(b) ** 0.8 / speed) for b in BATCHES}
    return {
        "size_bytes": size,
        "latency_ms": latency,
        "throughput_per_s": {b: round(int(b) * 1000 / latency[b]["p50"], 2) for b in BATCHES},
        "peak_memory_bytes": size * 3 + rng.randrange(1 << 20),
        "accuracy": accuracy,
    }


def realistic_result(rng: random.Random) -> dict[str, Any]:
    """A succeeded quantization job's `result`, with the keys optimizers/pipeline.py writes."""
    size = rng.randrange(200_000, 40_000_000)
    speedup = rng.uniform(0.8, 3.0)
    accuracy = round(rng.uniform(0.85, 0.99), 4)
    drop = round(rng.uniform(0, 0.03), 4)
    baseline = _measured(rng, size=size, speed=1.0, accuracy=accuracy)
    optimized = _measured(rng, size=size // 4, speed=speedup, accuracy=round(accuracy - drop, 4))
    slower = speedup < 1
    stage = {
        "pass": 1,
        "kind": "quantize",
        "method": "static",
        "duration_s": round(rng.uniform(0.5, 30), 3),
        "notes": [],
        "artifact": "pass1-quantize.onnx",
        "size_bytes": size // 4,
        "latency_ms": {"1": optimized["latency_ms"]["1"]},
    }
    return {
        "metrics": {
            "baseline": baseline,
            "optimized": optimized,
            "fidelity": {
                "cosine_mean": round(rng.uniform(0.97, 1.0), 5),
                "source": "evaluate dataset",
                "samples": 256,
            },
            "comparison": {
                "size_ratio": 0.25,
                "speedup_p50": {b: round(speedup * rng.uniform(0.95, 1.05), 3) for b in BATCHES},
                "speedup_interval": {
                    b: [round(speedup * 0.93, 3), round(speedup * 1.07, 3)] for b in BATCHES
                },
                "accuracy_drop": drop,
                "metric": "accuracy",
                "drop": drop,
                "max_drop": 0.02,
                "slower_than_baseline": slower,
                "within_tolerance": drop <= 0.02,
                "verdict": (
                    "slower than the original"
                    if slower
                    else f"{speedup:.1f}x faster at batch 1, 4.0x smaller, accuracy -{drop:.3f}"
                ),
            },
            "benchmark": {
                "provider": "CPUExecutionProvider",
                "threads": 1,
                "warmup": 10,
                "iterations": 200,
                "batch_sizes": [int(b) for b in BATCHES],
                "session_options": {"graph_optimization_level": "ORT_ENABLE_ALL"},
                "timing": "paired, interleaved runs of both models",
                "baseline": "the uploaded model as stored",
                "inputs": {"source": "dataset", "dataset_id": "dst_bench", "samples": 256},
            },
            "environment": {
                "onnxruntime": "1.20.1",
                "python": "3.11.2",
                "cpu": "x86_64",
                "cores": 2,
                "provider": "CPUExecutionProvider",
            },
        },
        "notes": [],
        "passes": [
            {
                "kind": "quantize",
                "method": "static",
                "duration_s": stage["duration_s"],
                "details": {"calibration_samples": 128, "per_channel": True},
                "notes": [],
            }
        ],
        "stages": [stage],
        "source": {"format": "onnx"},
    }


def fill(*, jobs: int, project_id: str, model_id: str, seed: int = 7) -> str:
    """Inserts the jobs; returns the id of a succeeded one."""
    from sqlalchemy import insert

    from core.db import new_id, session_scope, utcnow
    from core.tables import Job

    rng = random.Random(seed)
    now = utcnow()
    rows: list[dict[str, Any]] = []
    succeeded = ""
    for number in range(jobs):
        created = now - timedelta(minutes=number * 9)
        draw = rng.random()
        status = (
            "succeeded"
            if draw < 0.85
            else "failed"
            if draw < 0.93
            else "canceled"
            if draw < 0.98
            else "queued"
        )
        job_id = new_id("job")
        spec = {
            "model_id": model_id,
            "passes": [{"kind": "quantize", "method": "static", "per_channel": True}],
            "benchmark": {"batch_sizes": [1, 8, 32]},
        }
        rows.append(
            {
                "id": job_id,
                "project_id": project_id,
                "model_id": model_id,
                "spec": spec,
                "dataset_ids": [],
                "extra_model_ids": [],
                "queue": "cpu",
                "status": status,
                "stage": "done" if status == "succeeded" else None,
                "progress": 1.0 if status == "succeeded" else 0.0,
                "attempts": 0 if status == "queued" else 1,
                "max_attempts": 3,
                "error_type": "evaluation_failed" if status == "failed" else None,
                "error_message": "accuracy dropped 0.041 (max 0.02)"
                if status == "failed"
                else None,
                "result": realistic_result(rng) if status == "succeeded" else None,
                "created_at": created,
                "queued_at": created,
                "started_at": None if status == "queued" else created + timedelta(seconds=2),
                "finished_at": None if status == "queued" else created + timedelta(seconds=40),
                "updated_at": created,
            }
        )
        if status == "succeeded" and number > jobs // 2 and not succeeded:
            succeeded = job_id  # one in the middle, not the newest
    with session_scope() as session:
        for start in range(0, len(rows), 1000):
            session.execute(insert(Job), rows[start : start + 1000])
    return succeeded


def _percentiles(samples: list[float]) -> str:
    cut = statistics.quantiles(sorted(samples), n=100)
    return f"p50 {cut[49]:6.1f}  p95 {cut[94]:6.1f}  p99 {cut[98]:6.1f} ms"


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _signed_in(base_url: str) -> httpx.Client:
    """A kept-alive client with a dashboard session, signed in as a browser is."""
    client = httpx.Client(base_url=base_url, timeout=30)
    form = client.get("/signin")
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert token, "no sign-in form"
    signed = client.post(
        "/signin", data={"api_key": ADMIN_KEY, "csrf_token": token.group(1), "next": "/jobs"}
    )
    assert signed.status_code == 303, signed.text
    return client


def measure(database_url: str | None, *, jobs: int, requests: int, label: str) -> None:
    from tests.integration.processes import run_service

    folder = Path(tempfile.mkdtemp(prefix="modelpress-bench-"))
    extra = {"MODELPRESS_LOG_LEVEL": "WARNING"}
    if database_url:
        from core.migrate import upgrade

        upgrade(database_url)
        extra["MODELPRESS_DATABASE_URL"] = database_url
    for service in run_service(folder, None, extra, with_worker=False):
        # This process writes the jobs straight into the service's database.
        os.environ["MODELPRESS_DATA_DIR"] = service.env["MODELPRESS_DATA_DIR"]
        if database_url:
            os.environ["MODELPRESS_DATABASE_URL"] = database_url
        model_path = make_mlp(folder / "mlp.onnx", in_features=16, hidden=32, classes=4)
        with service.client() as admin, model_path.open("rb") as handle:
            model = admin.post("/v1/models", files={"file": ("mlp.onnx", handle)})
            model.raise_for_status()
            project_id = admin.get("/v1/keys").json()[0]["project_id"]
        began = time.perf_counter()
        job_id = fill(jobs=jobs, project_id=project_id, model_id=model.json()["id"])
        print(f"{label}: {jobs} jobs inserted in {time.perf_counter() - began:.1f} s")
        api_pid = service.processes["api"].popen.pid
        client = _signed_in(service.base_url)
        try:
            for path in ("/jobs", f"/jobs/{job_id}"):
                shown = path.replace(job_id, "{id}")
                first = client.get(path)
                if first.status_code == 404:
                    print(f"{label}: GET {shown:<11} absent (404)")
                    continue
                assert first.status_code == 200, f"{path}: {first.status_code}"
                for _ in range(10):
                    client.get(path)
                samples = []
                cpu_before = _cpu_seconds(api_pid)
                for _ in range(requests):
                    began = time.perf_counter()
                    response = client.get(path)
                    samples.append((time.perf_counter() - began) * 1000)
                    assert response.status_code == 200
                cpu_ms = (_cpu_seconds(api_pid) - cpu_before) * 1000 / requests
                print(
                    f"{label}: GET {shown:<11} {_percentiles(samples)}  "
                    f"(server CPU {cpu_ms:.1f} ms/request, {len(first.content)} B)"
                )
        finally:
            client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    args = parser.parse_args()
    if args.backend == "both":
        # One process per database: settings and engines are made once per process.
        for backend in ("sqlite", "postgres"):
            subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--jobs",
                    str(args.jobs),
                    "--requests",
                    str(args.requests),
                    "--backend",
                    backend,
                ],
                check=True,
            )
        return
    if args.backend == "sqlite":
        measure(None, jobs=args.jobs, requests=args.requests, label="sqlite")
        return
    from tests.ports import free_port
    from tests.postgres import run_postgres

    for url in run_postgres(free_port()):
        measure(url, jobs=args.jobs, requests=args.requests, label="postgres")


if __name__ == "__main__":
    main()
