"""What confining jobs costs: the job host's one-time start-up, and the time each job adds.

    .venv/bin/python bench/confinement.py [--runs 20]

Per job, a job process is started on a warm host and ends at once (its request names a model
format that does not exist, so it reports an error right after its first progress message);
timed from emptying the scratch folder and copying the model in, through the start, the
messages, the host's report that the job ended and everything it left is gone, to copying a
file of the model's size back out. The same round trip is timed with the sandbox
(bubblewrap) and without it (MODELPRESS_UNSAFE_UNCONFINED_JOBS), and against what a job's
start cost before confinement: a fork of a process that has torch and onnxruntime loaded,
whose child exits at once. Added per job = confined round trip - that fork, medians.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.settings import Settings  # noqa: E402
from tests.models.onnx_basic import make_mlp  # noqa: E402
from worker.sandbox import JobHost, kernel_limits  # noqa: E402


def round_trip(host: JobHost, model: Path, settings: Settings) -> float:
    began = time.perf_counter()
    host.scratch.empty()
    host.scratch.copy_in("input/model.onnx", model)
    request = {
        "job_id": "job_bench",
        "spec": {"passes": [{"kind": "quantize", "method": "dynamic"}]},
        "model": {"path": "input/model.onnx", "format": "no-such-format", "info": {}},
        "extra_models": {},
        "datasets": {},
        "max_total_bytes": 1 << 30,
    }
    host.scratch.write_bytes("request.json", json.dumps(request).encode())
    process = host.start_job(kernel_limits(settings, memory_mb=None, hard_time_s=600))
    messages = []
    while process.exitcode is None:
        messages.extend(process.poll(1.0))
    messages.extend(process.poll(0))
    process.close()
    host.scratch.copy_out("input/model.onnx", host.scratch.root.parent / "out.onnx")
    elapsed = time.perf_counter() - began
    if not any(m["type"] == "error" for m in messages):
        raise RuntimeError(f"the job did not report its error: {messages}")
    return elapsed


def fork_seconds() -> float:
    """A job's start before confinement: the pool process forked itself."""
    began = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return time.perf_counter() - began


def measure(settings: Settings, model: Path, runs: int) -> tuple[float, list[float]]:
    host = JobHost(settings)
    try:
        startup = host.wait_ready()
        round_trip(host, model, settings)  # the first job pays one-off costs
        return startup, [round_trip(host, model, settings) for _ in range(runs)]
    finally:
        host.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        model = make_mlp(tmp_path / "mlp.onnx", in_features=256, hidden=1024, classes=100)
        model_mb = model.stat().st_size / 1e6
        confined = Settings(data_dir=tmp_path / "confined")
        unconfined = Settings(data_dir=tmp_path / "unconfined", unsafe_unconfined_jobs=True)
        confined_start, confined_runs = measure(confined, model, args.runs)
        unconfined_start, unconfined_runs = measure(unconfined, model, args.runs)

        from optimizers.pipeline import preload

        preload()
        import torch  # noqa: F401

        gc.freeze()
        fork_seconds()
        forks = [fork_seconds() for _ in range(args.runs)]

    def ms(values: list[float]) -> str:
        return f"{statistics.median(values) * 1000:.1f} ms"

    print(f"model copied in and out per job: {model_mb:.1f} MB")
    print(f"job host start-up, confined:   {confined_start:.2f} s")
    print(f"job host start-up, unconfined: {unconfined_start:.2f} s")
    print(f"per-job round trip, confined (median of {args.runs}):   {ms(confined_runs)}")
    print(f"per-job round trip, unconfined (median of {args.runs}): {ms(unconfined_runs)}")
    print(f"fork of a worker with torch loaded (median of {args.runs}): {ms(forks)}")
    added = statistics.median(confined_runs) - statistics.median(forks)
    print(f"added per job by confinement: {added * 1000:.1f} ms (goal: at most 500 ms)")


if __name__ == "__main__":
    main()
