"""Creating a 1,000-job sweep in one request, and paging through its jobs with their summaries.

    .venv/bin/python bench/batch_submit.py [--broker embedded|redis] [--runs 3] [--pages 30]

Goals: creation under 3 s; a page of 100 jobs with summaries under 100 ms at p99. No worker
runs: the jobs stay queued, and each job is then given a finished result (written straight
into the database, as a worker would) so every page carries 100 summaries.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.integration.processes import run_redis, run_service  # noqa: E402
from tests.models.onnx_basic import make_mlp  # noqa: E402

SWEEP_JOBS = 1000
MATRIX = {
    "passes.0.per_channel": [True, False],
    "passes.0.weight_type": ["int8", "uint8"],
    "benchmark.warmup": list(range(1, 6)),
    "benchmark.iterations": list(range(10, 60)),
}

SIDE = {
    "size_bytes": 1000,
    "latency_ms": {"1": {"p50": 1.0, "p90": 1.1, "p95": 1.2, "p99": 1.3, "mean": 1.05}},
    "throughput_per_s": {"1": 900.0},
    "peak_memory_bytes": 10,
    "accuracy": 1.0,
}
RESULT = {
    "metrics": {
        "baseline": SIDE,
        "optimized": SIDE | {"size_bytes": 270},
        "fidelity": {"cosine_mean": 0.999, "source": "evaluate_dataset", "samples": 8},
        "comparison": {
            "size_ratio": 0.27,
            "speedup_p50": {"1": 1.8, "8": 2.1},
            "speedup_interval": {"1": [1.6, 2.0], "8": [1.9, 2.3]},
            "accuracy_drop": 0.0,
            "metric": "accuracy",
            "drop": 0.0,
            "max_drop": 0.01,
            "slower_than_baseline": False,
            "within_tolerance": True,
            "verdict": "3.7x smaller, 1.8x faster at batch 1, no accuracy drop",
        },
    },
    "notes": [],
    "passes": [{"kind": "quantize"}],
    "stages": [],
}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--broker", choices=["embedded", "redis"], default="embedded")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--pages", type=int, default=30, help="Page reads timed per run.")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        tmp_path = Path(tmp)
        broker = None
        if args.broker == "redis":
            broker = stack.enter_context(contextlib.contextmanager(run_redis)(tmp_path))
        service = stack.enter_context(
            contextlib.contextmanager(run_service)(tmp_path, broker, with_worker=False)
        )
        database = tmp_path / "data" / "modelpress.db"
        model_path = make_mlp(tmp_path / "mlp.onnx")
        creations: list[float] = []
        pages: list[float] = []
        with service.client() as client:
            with model_path.open("rb") as handle:
                model = client.post("/v1/models", files={"file": ("mlp.onnx", handle)}).json()
            spec = {"model_id": model["id"], "passes": [{"kind": "quantize", "method": "dynamic"}]}
            for run in range(args.runs):
                began = time.perf_counter()
                answer = client.post(
                    "/v1/batches",
                    json={"name": f"bench {run}", "sweep": {"spec": spec, "matrix": MATRIX}},
                    timeout=120,
                )
                creations.append(time.perf_counter() - began)
                assert answer.status_code == 202, answer.text[:500]
                batch = answer.json()
                assert batch["total"] == SWEEP_JOBS
                with sqlite3.connect(database) as db:
                    db.execute(
                        "UPDATE jobs SET status = 'succeeded', result = ? WHERE batch_id = ?",
                        (json.dumps(RESULT), batch["id"]),
                    )
                token = None
                for _ in range(args.pages):
                    params: dict[str, str | int] = {"batch_id": batch["id"], "page_size": 100}
                    if token:
                        params["page_token"] = token
                    began = time.perf_counter()
                    page = client.get("/v1/jobs", params=params)
                    pages.append(time.perf_counter() - began)
                    body = page.json()
                    assert len(body["items"]) == 100 or not body["next_page_token"]
                    assert all(item["summary"] for item in body["items"])
                    token = body["next_page_token"]  # wraps to the first page at the end
    print(f"broker={args.broker} runs={args.runs} jobs/sweep={SWEEP_JOBS}")
    print(
        f"create 1,000-job sweep: median {statistics.median(creations):.2f} s, "
        f"max {max(creations):.2f} s  (goal < 3 s)"
    )
    print(
        f"page of 100 jobs with summaries ({len(pages)} reads): "
        f"p50 {percentile(pages, 0.5) * 1000:.1f} ms, p99 {percentile(pages, 0.99) * 1000:.1f} ms"
        "  (goal p99 < 100 ms)"
    )


if __name__ == "__main__":
    main()
