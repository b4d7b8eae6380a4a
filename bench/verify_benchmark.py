"""Check a job's reported speedup with plain onnxruntime: download the job's original and
optimized models, feed them the inputs the job recorded, time them with plain sessions built
from the session options the job recorded (only public onnxruntime options), one model after
the other, and print the service's p50 speedup beside this script's per batch size.

    # a finished job of a running service
    MODELPRESS_API_URL=http://127.0.0.1:8000 MODELPRESS_API_KEY=mpk_... \\
        .venv/bin/python bench/verify_benchmark.py JOB_ID [--dataset data.npz]

    # one command: start a local API + worker, run the bench's transformer encoder with
    # dynamic per-channel int8 through it, then verify that job
    .venv/bin/python bench/verify_benchmark.py --local [--iterations 50] [--rounds 4]

    # the same recipe run in-process as a worker runs it (no API), then verified
    .venv/bin/python bench/verify_benchmark.py --direct

The timing part imports nothing of modelpress: it is what a user would write. `--dataset` is
needed only for a job whose benchmark fed dataset rows (the API does not serve datasets
back). Exit status 1 when a batch size differs by more than --tolerance (10%).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
#: The recipe of the issue: the transformer encoder quantized with dynamic per-channel int8.
RECIPE: dict[str, Any] = {
    "passes": [{"kind": "quantize", "method": "dynamic", "per_channel": True}],
    "benchmark": {"batch_sizes": [1, 8], "warmup": 10, "iterations": 50},
}


# --- plain onnxruntime: what a user reproducing the number writes --------------------------


def plain_session(path: Path, record: dict[str, Any]) -> ort.InferenceSession:
    """A session with the options the job recorded, by their public onnxruntime names."""
    recorded = record["session_options"]
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(recorded["intra_op_num_threads"])
    options.inter_op_num_threads = int(recorded["inter_op_num_threads"])
    options.execution_mode = getattr(ort.ExecutionMode, recorded["execution_mode"])
    options.graph_optimization_level = getattr(
        ort.GraphOptimizationLevel, recorded["graph_optimization_level"]
    )
    for key, value in recorded["config_entries"].items():
        options.add_session_config_entry(key, value)
    return ort.InferenceSession(str(path), sess_options=options, providers=[record["provider"]])


def recorded_feeds(
    record: dict[str, Any], batch: int, dataset: Path | None
) -> dict[str, np.ndarray]:
    """The inputs the job fed at `batch`, rebuilt from its record."""
    inputs = record["inputs"]
    dtypes: dict[str, str] = inputs["dtypes"]
    axes: dict[str, int | None] = inputs["batch_axes"]
    if inputs["source"] == "synthetic":
        rng = np.random.default_rng(inputs["seed"])
        feeds: dict[str, np.ndarray] = {}
        for name in inputs["order"]:
            dtype, shape = dtypes[name], inputs["shapes"][str(batch)][name]
            kind = np.dtype(dtype).kind
            values = rng.standard_normal(shape) if kind == "f" else rng.integers(0, 2, size=shape)
            feeds[name] = values.astype(dtype)
        return feeds
    if dataset is None:
        raise SystemExit(
            f"the job fed rows of dataset {inputs['dataset_id']}; pass the same .npz file "
            "with --dataset"
        )
    feeds = {}
    rows = np.arange(batch) % int(inputs["num_samples"])
    with np.load(dataset) as arrays:
        for name in inputs["order"]:
            axis = axes[name]
            array = arrays[name]
            feeds[name] = array if axis is None else np.moveaxis(array[rows], 0, axis)
    return feeds


def time_in_turn(
    sessions: dict[str, ort.InferenceSession],
    feeds: dict[str, np.ndarray],
    *,
    warmup: int,
    iterations: int,
    rounds: int,
) -> tuple[dict[str, list[float]], list[float]]:
    """Each model warmed up and timed `iterations` times in a row, one model after the
    other, `rounds` times with the order swapped every round. Returns every timed run in ms
    per model and the p50 speedup of each round (its spread is the noise)."""
    times: dict[str, list[float]] = {name: [] for name in sessions}
    per_round: list[float] = []
    names = list(sessions)
    for round_index in range(rounds):
        order = names if round_index % 2 == 0 else names[::-1]
        medians: dict[str, float] = {}
        for name in order:
            session = sessions[name]
            for _ in range(warmup):
                session.run(None, feeds)
            runs = []
            for _ in range(iterations):
                began = time.perf_counter_ns()
                session.run(None, feeds)
                runs.append((time.perf_counter_ns() - began) / 1e6)
            times[name].extend(runs)
            medians[name] = statistics.median(runs)
        per_round.append(medians["baseline"] / medians["optimized"])
    return times, per_round


def time_alternating(
    sessions: dict[str, ort.InferenceSession],
    feeds: dict[str, np.ndarray],
    *,
    warmup: int,
    iterations: int,
) -> float:
    """The p50 speedup with the two models' runs alternating run by run (how the service
    timed before it timed in blocks), for comparison."""
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(warmup):
        for session in sessions.values():
            session.run(None, feeds)
    for _ in range(iterations):
        for name, session in sessions.items():
            began = time.perf_counter_ns()
            session.run(None, feeds)
            times[name].append((time.perf_counter_ns() - began) / 1e6)
    return statistics.median(times["baseline"]) / statistics.median(times["optimized"])


def verify(
    *,
    original: Path,
    optimized: Path,
    metrics: dict[str, Any],
    dataset: Path | None,
    rounds: int,
    tolerance: float,
    alternating: bool = False,
) -> bool:
    """Print the service's speedup beside plain onnxruntime's; True when all agree."""
    record = metrics["benchmark"]
    comparison = metrics["comparison"]
    sessions = {
        "baseline": plain_session(original, record),
        "optimized": plain_session(optimized, record),
    }
    print(
        f"threads {record['threads']}, provider {record['provider']}, warm-up "
        f"{record['warmup']}, {record['iterations']} timed runs per model and round, "
        f"{rounds} rounds in turn (order swapped each round); inputs: "
        f"{record['inputs']['source']}"
    )
    print(f"{'batch':>5}  {'service p50 speedup':<28}  {'plain onnxruntime':<30}  difference")
    agree = True
    for batch in record["batch_sizes"]:
        feeds = recorded_feeds(record, batch, dataset)
        times, per_round = time_in_turn(
            sessions,
            feeds,
            warmup=record["warmup"],
            iterations=record["iterations"],
            rounds=rounds,
        )
        plain = statistics.median(times["baseline"]) / statistics.median(times["optimized"])
        service = comparison["speedup_p50"][str(batch)]
        low, high = comparison["speedup_interval"][str(batch)]
        difference = service / plain - 1.0
        agree = agree and abs(difference) <= tolerance
        print(
            f"{batch:>5}  {service:>6.2f}x [95%: {low:.2f}-{high:.2f}]       "
            f"{plain:>6.2f}x (rounds {min(per_round):.2f}-{max(per_round):.2f})       "
            f"{difference:+.1%}"
        )
        if alternating:
            speedup = time_alternating(
                sessions, feeds, warmup=record["warmup"], iterations=record["iterations"]
            )
            print(f"{'':>5}  plain, runs alternating model by model: {speedup:.2f}x")
        print(
            f"{'':>5}  service p50 ms: baseline "
            f"{metrics['baseline']['latency_ms'][str(batch)]['p50']:.2f}, optimized "
            f"{metrics['optimized']['latency_ms'][str(batch)]['p50']:.2f}; plain: baseline "
            f"{statistics.median(times['baseline']):.2f}, optimized "
            f"{statistics.median(times['optimized']):.2f}"
        )
    verdict = "yes" if agree else "NO"
    print(f"within {tolerance:.0%} at every batch size: {verdict}")
    return agree


# --- where the job comes from ------------------------------------------------------------


def download_job(
    base_url: str, key: str, job_id: str, dest: Path
) -> tuple[Path, Path, dict[str, Any]]:
    """The job's original model, optimized model and metrics, through the API."""
    import httpx

    with httpx.Client(
        base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=120
    ) as client:
        job = _ok(client.get(f"/v1/jobs/{job_id}")).json()
        if job["status"] != "succeeded":
            raise SystemExit(f"job {job_id} is {job['status']}; only a succeeded job has numbers")
        original = dest / "original.onnx"
        original.write_bytes(_ok(client.get(f"/v1/models/{job['model_id']}/content")).content)
        artifacts = _ok(client.get(f"/v1/jobs/{job_id}/artifacts")).json()
        model = next(artifact for artifact in artifacts if artifact["kind"] == "model")
        content = _ok(client.get(f"/v1/artifacts/{model['id']}/content")).content
        optimized = dest / model["name"]
        optimized.write_bytes(content)
    if optimized.suffix == ".zip":  # a model with external data: the .onnx file inside
        with zipfile.ZipFile(optimized) as archive:
            archive.extractall(dest / "optimized")
        optimized = next((dest / "optimized").glob("*.onnx"))
    if zipfile.is_zipfile(original):
        raise SystemExit("the original is a zip (external data or PyTorch); not supported here")
    return original, optimized, job["result"]["metrics"]


def _ok(response: Any) -> Any:
    if response.status_code >= 400:
        raise SystemExit(f"{response.request.url}: {response.status_code} {response.text}")
    return response


def _bench_model(workdir: Path) -> Path:
    sys.path.insert(0, str(ROOT))
    from bench.models import MODELS, export_model

    return export_model(MODELS["transformer"], workdir / "transformer.onnx")


@contextlib.contextmanager
def local_job(workdir: Path, recipe: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    """A local API and worker (as the integration tests start them) that ran `recipe` on the
    transformer encoder: yields (API URL, key, job id); the service stops afterwards."""
    sys.path.insert(0, str(ROOT))
    from tests.conftest import ADMIN_KEY
    from tests.integration.processes import run_service

    model = _bench_model(workdir)
    with contextlib.contextmanager(run_service)(workdir / "service", None) as service:
        client = service.client()
        with model.open("rb") as handle:
            model_id = _ok(client.post("/v1/models", files={"file": handle})).json()["id"]
        job = _ok(client.post("/v1/jobs", json={"model_id": model_id, **recipe})).json()
        began = time.monotonic()
        while job["status"] not in ("succeeded", "failed", "canceled"):
            if time.monotonic() - began > 1800:
                raise SystemExit(f"job {job['id']} did not finish in 30 minutes")
            time.sleep(1)
            job = _ok(client.get(f"/v1/jobs/{job['id']}")).json()
        if job["status"] != "succeeded":
            raise SystemExit(f"job {job['id']} ended {job['status']}: {job['error']}")
        yield service.base_url, ADMIN_KEY, job["id"]


def _direct_pipeline(model: str, workdir: str, recipe: dict[str, Any], out: str) -> None:
    """Runs in a child process, as a worker's job process does: the parent then times with
    plain sessions in a process that never held the pipeline's."""
    sys.path.insert(0, str(ROOT))
    import gc

    from optimizers.config import PipelineSpec
    from optimizers.pipeline import preload, run_pipeline

    preload()
    gc.freeze()
    result = run_pipeline(
        model_path=Path(model),
        spec=PipelineSpec.model_validate(recipe),
        datasets={},
        workdir=Path(workdir),
    )
    Path(out).write_text(
        json.dumps({"optimized": str(result.model_path), "metrics": result.metrics})
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("job_id", nargs="?", help="a succeeded job of the service at --api-url")
    parser.add_argument("--api-url", default=os.environ.get("MODELPRESS_API_URL"))
    parser.add_argument("--api-key", default=os.environ.get("MODELPRESS_API_KEY"))
    parser.add_argument("--dataset", type=Path, help="the .npz the job's benchmark read")
    parser.add_argument("--local", action="store_true", help="run a job on a local service")
    parser.add_argument("--direct", action="store_true", help="run the job in-process")
    parser.add_argument("--iterations", type=int, help="--local/--direct: timed runs per model")
    parser.add_argument("--threads", type=int, help="--local/--direct: intra-op threads")
    parser.add_argument("--rounds", type=int, default=4, help="plain timing rounds")
    parser.add_argument("--tolerance", type=float, default=0.10)
    parser.add_argument(
        "--alternating",
        action="store_true",
        help="also time the two models alternating run by run, for comparison",
    )
    args = parser.parse_args()

    recipe = json.loads(json.dumps(RECIPE))
    if args.iterations:
        recipe["benchmark"]["iterations"] = args.iterations
    if args.threads is not None:
        recipe["benchmark"]["threads"] = args.threads
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        workdir = Path(tmp)
        if args.direct:
            model = _bench_model(workdir)
            out = workdir / "result.json"
            child = multiprocessing.get_context("spawn").Process(
                target=_direct_pipeline, args=(str(model), str(workdir), recipe, str(out))
            )
            child.start()
            child.join()
            if child.exitcode != 0:
                raise SystemExit(f"the pipeline failed (exit {child.exitcode})")
            result = json.loads(out.read_text())
            original, optimized, metrics = model, Path(result["optimized"]), result["metrics"]
            print(f"job run in-process: {json.dumps(recipe)}")
        else:
            if args.local:
                base_url, key, job_id = stack.enter_context(local_job(workdir, recipe))
                print(f"job {job_id} on a local API + worker: {json.dumps(recipe)}")
            else:
                if not (args.job_id and args.api_url and args.api_key):
                    parser.error(
                        "give JOB_ID with --api-url and --api-key (or MODELPRESS_API_URL and "
                        "MODELPRESS_API_KEY), or --local, or --direct"
                    )
                base_url, key, job_id = args.api_url, args.api_key, args.job_id
            original, optimized, metrics = download_job(base_url, key, job_id, workdir)
            # The service (if local) stops before the timing, so its processes are idle.
            stack.close()
        agree = verify(
            original=original,
            optimized=optimized,
            metrics=metrics,
            dataset=args.dataset,
            rounds=args.rounds,
            tolerance=args.tolerance,
            alternating=args.alternating,
        )
    raise SystemExit(0 if agree else 1)


if __name__ == "__main__":
    main()
