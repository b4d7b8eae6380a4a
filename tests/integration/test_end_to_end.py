"""A user's whole path through real processes: upload, quantize on a worker, read the
numbers, download the optimized model and run it."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort

from tests.integration.processes import Service
from tests.models.onnx_basic import make_dataset, make_mlp


def upload(client: httpx.Client, route: str, path: Path) -> dict[str, Any]:
    with path.open("rb") as handle:
        response = client.post(route, files={"file": (path.name, handle)})
    assert response.status_code == 201, response.text
    return response.json()


def wait_for_job(
    service: Service, client: httpx.Client, job_id: str, states: set[str], timeout: float = 180
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            job = client.get(f"/v1/jobs/{job_id}").json()
        except httpx.TransportError:
            # A server busy restarting or refusing for a moment; a server that really died
            # fails below with its logs.
            time.sleep(0.5)
            continue
        if job["status"] in states:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job stuck in {job.get('status')}: {job}\n{service.dump_logs()}")


def follow_events(
    service: Service, client: httpx.Client, job_id: str, timeout: float = 180
) -> list[dict[str, Any]]:
    """The job's server-sent events up to its final state, reconnecting as EventSource does."""
    events: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with client.stream("GET", f"/v1/jobs/{job_id}/events", timeout=timeout) as response:
            assert response.status_code == 200, response.read()
            events += [
                json.loads(line.removeprefix("data: "))
                for line in response.iter_lines()
                if line.startswith("data: ")
            ]
        if events and events[-1]["status"] in {"succeeded", "failed", "canceled"}:
            return events
    raise AssertionError(f"no final state in {events}\n{service.dump_logs()}")


def wait_for_stage(service: Service, client: httpx.Client, job_id: str, stage: str) -> None:
    deadline = time.monotonic() + 60
    while client.get(f"/v1/jobs/{job_id}").json()["stage"] != stage:
        assert time.monotonic() < deadline, service.dump_logs()
        time.sleep(0.2)


def run_quantization_job(service: Service, tmp_path: Path) -> None:
    model_path = make_mlp(tmp_path / "mlp.onnx", in_features=32, hidden=256, classes=10)
    data_path = make_dataset(tmp_path / "data.npz", model_path, samples=64)
    with service.client() as client:
        model = upload(client, "/v1/models", model_path)
        dataset = upload(client, "/v1/datasets", data_path)
        spec = {
            "model_id": model["id"],
            "passes": [
                {
                    "kind": "quantize",
                    "method": "static",
                    "per_channel": True,
                    "calibration": {"dataset_id": dataset["id"], "samples": 32},
                }
            ],
            "evaluate": {"dataset_id": dataset["id"], "max_drop": 0.1},
            "benchmark": {"batch_sizes": [1, 8], "warmup": 2, "iterations": 10},
        }
        created = client.post("/v1/jobs", json=spec)
        assert created.status_code == 202, created.text
        events = follow_events(service, client, created.json()["id"])
        job = events[-1]
        assert job["status"] == "succeeded", f"{job['error']}\n{service.dump_logs()}"
        # The stream showed the job's way there, stage by stage.
        stages = [event["stage"] for event in events if event["status"] == "running"]
        assert len(set(stages)) >= 2, stages
        assert job["attempts"] == 1 and job["progress"]["fraction"] == 1.0
        assert job["started_at"] and job["finished_at"]

        metrics = job["result"]["metrics"]
        for side in ("baseline", "optimized"):
            numbers = metrics[side]
            assert numbers["size_bytes"] > 0
            assert set(numbers["latency_ms"]) == {"1", "8"}
            assert set(numbers["latency_ms"]["8"]) >= {"p50", "p90", "p95", "p99", "mean"}
            assert numbers["throughput_per_s"]["8"] > 0
            assert numbers["peak_memory_bytes"] > 0
        assert metrics["baseline"]["accuracy"] == 1.0  # labels are the float model's answers
        assert metrics["optimized"]["size_bytes"] < metrics["baseline"]["size_bytes"] / 2
        assert metrics["fidelity"]["cosine_mean"] > 0.99
        comparison = metrics["comparison"]
        assert comparison["size_ratio"] < 0.5
        assert isinstance(comparison["slower_than_baseline"], bool)
        assert comparison["within_tolerance"] is True
        assert metrics["environment"]["execution_provider"] == "CPUExecutionProvider"

        artifacts = client.get(f"/v1/jobs/{job['id']}/artifacts").json()
        kinds = {a["kind"]: a for a in artifacts}
        assert set(kinds) >= {"model", "report", "sensitivity"}
        sensitivity = client.get(f"/v1/artifacts/{kinds['sensitivity']['id']}/content").json()
        assert sensitivity["status"] == "ok"
        ranked = [node["node"] for node in sensitivity["nodes"]]
        assert ranked and len(ranked) == len(set(ranked))
        model_artifact = kinds["model"]
        content = client.get(f"/v1/artifacts/{model_artifact['id']}/content")
        assert content.status_code == 200
        assert content.headers["etag"] == f'"{model_artifact["sha256"]}"'
        assert len(content.content) == model_artifact["size_bytes"]
        head = client.get(
            f"/v1/artifacts/{model_artifact['id']}/content", headers={"Range": "bytes=0-99"}
        )
        assert head.status_code == 206 and head.content == content.content[:100]

        optimized_path = tmp_path / "optimized.onnx"
        optimized_path.write_bytes(content.content)
        inputs = np.load(data_path)["x"][:16]
        original = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
        optimized = ort.InferenceSession(str(optimized_path), providers=["CPUExecutionProvider"])
        expected = original.run(None, {"x": inputs})[0]
        actual = optimized.run(None, {"x": inputs})[0]
        cosine = np.sum(expected * actual) / (np.linalg.norm(expected) * np.linalg.norm(actual))
        assert cosine > 0.99
        assert (np.argmax(expected, 1) == np.argmax(actual, 1)).mean() >= 0.9

        report = client.get(f"/v1/artifacts/{kinds['report']['id']}/content").json()
        assert report["metrics"]["comparison"] == comparison
        assert client.get(f"/v1/jobs/{job['id']}/report").json() == report


def test_job_through_redis_s3_and_a_celery_worker(redis_service: Service, tmp_path: Path) -> None:
    run_quantization_job(redis_service, tmp_path)
    # Everything went through the object store: nothing was kept on the local disk.
    local = Path(redis_service.env["MODELPRESS_DATA_DIR"]) / "storage"
    assert not local.exists() or not [p for p in local.rglob("*") if p.is_file()]


def test_job_through_the_embedded_broker(embedded_service: Service, tmp_path: Path) -> None:
    run_quantization_job(embedded_service, tmp_path)


def test_cancel_a_running_job_frees_the_worker(redis_service: Service, tmp_path: Path) -> None:
    model_path = make_mlp(tmp_path / "mlp.onnx", in_features=32, hidden=256, classes=10)
    with redis_service.client() as client:
        model = upload(client, "/v1/models", model_path)
        slow = {
            "model_id": model["id"],
            "passes": [{"kind": "quantize", "method": "dynamic"}],
            "benchmark": {"batch_sizes": [1], "warmup": 1, "iterations": 100_000},
        }
        job = client.post("/v1/jobs", json=slow).json()
        wait_for_stage(redis_service, client, job["id"], "benchmarking")
        response = client.post(f"/v1/jobs/{job['id']}/cancel")
        assert response.status_code == 202
        assert response.json()["status"] == "canceling"
        canceled = wait_for_job(redis_service, client, job["id"], {"canceled"}, timeout=60)
        assert canceled["error"]["type"] == "canceled"
        assert canceled["progress"]["fraction"] < 0.9  # stopped mid-benchmark, not at the end
        assert "benchmarking" in canceled["error"]["message"]

        quick = {**slow, "benchmark": {"batch_sizes": [1], "warmup": 1, "iterations": 5}}
        next_job = client.post("/v1/jobs", json=quick).json()
        done = wait_for_job(redis_service, client, next_job["id"], {"succeeded", "failed"}, 120)
        assert done["status"] == "succeeded", done["error"]
