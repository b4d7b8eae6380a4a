"""Service overhead per job: the same quantize + benchmark recipe run directly through
`optimizers/` and submitted through the API and a worker.

    .venv/bin/python bench/service_overhead.py [--broker embedded|redis] [--runs 5]

Overhead = (submit -> succeeded wall time) - (direct run wall time), medians over runs.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from optimizers.config import PipelineSpec  # noqa: E402
from optimizers.pipeline import preload, run_pipeline  # noqa: E402
from tests.integration.processes import run_redis, run_service  # noqa: E402
from tests.models.onnx_basic import make_mlp  # noqa: E402

RECIPE = {
    "passes": [{"kind": "quantize", "method": "dynamic", "per_channel": True}],
    "benchmark": {"batch_sizes": [1, 8], "warmup": 5, "iterations": 50},
}


def prepare_like_a_worker() -> None:
    """The worker preloads lazy imports and freezes the garbage collector at start; the
    direct run gets the same treatment, so only the service's own costs differ."""
    preload()
    gc.freeze()


def direct_seconds(model: Path, workdir: Path) -> float:
    spec = PipelineSpec.model_validate(RECIPE)
    began = time.perf_counter()
    run_pipeline(model_path=model, spec=spec, datasets={}, workdir=workdir)
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--broker", choices=["embedded", "redis"], default="embedded")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        tmp_path = Path(tmp)
        model = make_mlp(tmp_path / "mlp.onnx", in_features=256, hidden=1024, classes=100)

        prepare_like_a_worker()
        direct_seconds(model, tmp_path / "warm")  # first run pays one-off costs
        direct = [direct_seconds(model, tmp_path / f"direct{i}") for i in range(args.runs)]

        broker_url = None
        if args.broker == "redis":
            broker_url = stack.enter_context(contextlib.contextmanager(run_redis)(tmp_path))
        service = stack.enter_context(
            contextlib.contextmanager(run_service)(tmp_path / "svc", broker_url)
        )
        client = stack.enter_context(service.client())
        with model.open("rb") as handle:
            model_id = client.post("/v1/models", files={"file": handle}).json()["id"]

        def submit() -> float:
            began = time.perf_counter()
            job_id = client.post("/v1/jobs", json={"model_id": model_id, **RECIPE}).json()["id"]
            while True:
                job = client.get(f"/v1/jobs/{job_id}").json()
                if job["status"] in ("succeeded", "failed", "canceled"):
                    break
                time.sleep(0.02)
            elapsed = time.perf_counter() - began
            if job["status"] != "succeeded":
                raise SystemExit(f"job {job_id} ended {job['status']}: {job['error']}")
            return elapsed

        submit()  # the worker's first job pays one-off imports too
        served = [submit() for _ in range(args.runs)]

    direct_median = statistics.median(direct)
    served_median = statistics.median(served)
    print(f"broker: {args.broker}, runs: {args.runs}")
    print(
        f"direct run (optimizers only):   median {direct_median:.3f} s  "
        f"[{', '.join(f'{s:.2f}' for s in direct)}]"
    )
    print(
        f"through API + worker:           median {served_median:.3f} s  "
        f"[{', '.join(f'{s:.2f}' for s in served)}]"
    )
    print(f"service overhead per job:       {served_median - direct_median:.3f} s (goal < 1.5 s)")


if __name__ == "__main__":
    main()
