"""How long `POST /v1/batches` takes while Redis is down, by batch size.

    .venv/bin/python bench/batch_broker_down.py [--sizes 1 10 50 100] [--runs 3]

A real API process on SQLite, its redis-server killed before the requests; prints the median
seconds per request for each batch size, and the same with Redis up for comparison.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.integration.processes import run_service, start_redis  # noqa: E402
from tests.integration.test_end_to_end import upload  # noqa: E402
from tests.models.onnx_basic import make_mlp  # noqa: E402
from tests.ports import free_port  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 10, 50, 100])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        port = free_port()
        broker = start_redis(tmp, port)
        service_run = run_service(tmp / "service", f"redis://127.0.0.1:{port}/0", with_worker=False)
        service = next(service_run)
        try:
            with service.client() as client:
                client.timeout = 600
                model = upload(client, "/v1/models", make_mlp(tmp / "mlp.onnx"))
                spec = {"model_id": model["id"], "passes": [{"kind": "quantize", "method": "fp16"}]}
                for state in ("up", "down"):
                    if state == "down":
                        broker.stop(signal.SIGKILL)
                    for size in args.sizes:
                        times = []
                        for _ in range(args.runs):
                            started = time.perf_counter()
                            answer = client.post("/v1/batches", json={"jobs": [spec] * size})
                            times.append(time.perf_counter() - started)
                            assert answer.status_code == 202, answer.text
                        median = statistics.median(times)
                        print(
                            f"redis {state:4}  batch of {size:3} jobs: {median:6.3f} s per "
                            f"request (median of {args.runs})",
                            flush=True,
                        )
        finally:
            service_run.close()
            broker.stop()


if __name__ == "__main__":
    main()
