"""`modelpress auto` against a real API server: the search it submits, its progress followed
with --wait, then the trials table and the answer; `jobs show` prints a search's trials. No
worker: the search's steps are written into the database as the search writes them."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.client.test_cli_delete import _upload, cli
from tests.conftest import ADMIN_KEY
from tests.integration.processes import BIN, ROOT, Service, run_service
from tests.models.onnx_basic import make_dataset, make_mlp

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

BEST = "int8 dynamic: 1.61x faster at batch 8, fidelity drop 0.0009 (limit 0.02), 3.2x smaller"
SLOWER_WHY = "slower here: 0.81x at batch 8 (95% interval 0.78x-0.84x)"


@pytest.fixture(scope="module")
def api_only(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    yield from run_service(tmp_path_factory.mktemp("cli-auto"), None, with_worker=False)


@pytest.fixture
def http(api_only: Service) -> Iterator[httpx.Client]:
    with api_only.client() as client:
        yield client


def _trials(*, graph_status: str) -> list[dict[str, Any]]:
    return [
        {
            "key": "int8-dynamic@1",
            "family": "int8_dynamic",
            "rung": 1,
            "status": "succeeded",
            "job_id": "job_trial_dynamic",
            "why": "dynamic int8 suits matmul-heavy graphs",
            "speedup": 1.61,
            "interval": [1.52, 1.70],
            "size_ratio": 0.31,
            "drop": 0.0009,
            "within_tolerance": True,
            "verdict": "faster",
            "error": None,
            "cached": True,
        },
        {
            "key": "int4-wo@0",
            "family": "int4_weight_only",
            "rung": 0,
            "status": "succeeded",
            "job_id": "job_trial_int4",
            "why": "weights dominate the size",
            "speedup": 0.81,
            "interval": [0.78, 0.84],
            "size_ratio": 0.18,
            "drop": 0.004,
            "within_tolerance": True,
            "verdict": "slower",
            "error": None,
            "cached": False,
        },
        {
            "key": "graph@1",
            "family": "graph",
            "rung": 1,
            "status": graph_status,
            "job_id": "job_trial_graph",
            "why": "the fallback",
            "error": None,
            "cached": False,
        },
    ]


def _result(*, done: int, stopped: str | None, best: str | None) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {
        "auto": {
            "preflight": {"structure": "mlp", "facts": {}, "applicable": {}, "skipped": {}},
            "progress": {
                "done": done,
                "running": 3 - done,
                "queued": 0,
                "left": 6 - done,
                "budget_trials": 6,
                "minutes": 5.0,
                "started_at": now.isoformat(),
                "deadline_at": (now + timedelta(minutes=5)).isoformat(),
                "cached": 1,
            },
            "stopped": stopped,
            "answer": {
                "best": best,
                "best_job_id": "job_trial_dynamic" if best else None,
                "fallback": None if best else "original",
                "message": BEST if best else "nothing was faster within the tolerance",
                "pareto": ["int8-dynamic@1"],
                "rejected": {"int4_weight_only": SLOWER_WHY},
                "trials": _trials(graph_status="succeeded" if stopped else "running"),
            },
        }
    }


def _store(service: Service, job_id: str, *, status: str, result: dict[str, Any]) -> None:
    """As the search leaves its job after a step (the service's database is SQLite)."""
    database = Path(service.env["MODELPRESS_DATA_DIR"]) / "modelpress.db"
    finished = "2026-11-30 04:00:00" if status in ("succeeded", "failed", "canceled") else None
    with sqlite3.connect(database) as connection:
        connection.execute(
            "UPDATE jobs SET status = ?, result = ?, finished_at = ? WHERE id = ?",
            (status, json.dumps(result), finished, job_id),
        )


def test_auto_submits_a_search_follows_it_and_prints_its_trials_and_answer(
    api_only: Service, http: httpx.Client, tmp_path: Path
) -> None:
    model = _upload(http, "models", make_mlp(tmp_path / "mlp.onnx"))
    dataset = _upload(http, "datasets", make_dataset(tmp_path / "d.npz", tmp_path / "mlp.onnx"))
    held_out = make_dataset(tmp_path / "held.npz", tmp_path / "mlp.onnx", seed=7)

    submitted = cli(
        api_only,
        tmp_path,
        *("auto", model["id"], "--dataset", dataset["id"], "--objective", "size"),
        *("--eval-dataset", str(held_out)),
        *("--max-drop", "0.02", "--trials", "6", "--minutes", "5", "--allow", "quantize,prune"),
        *("--batch-size", "4", "--metric", "fidelity", "--json"),
    )
    assert submitted.returncode == 0, submitted.stderr
    job_id = json.loads(submitted.stdout)["id"]
    (auto,) = http.get(f"/v1/jobs/{job_id}").json()["spec"]["passes"]
    assert auto["kind"] == "auto" and auto["objective"] == "size"
    assert (auto["dataset_id"], auto["max_drop"], auto["metric"]) == (
        dataset["id"],
        0.02,
        "fidelity",
    )
    assert auto["budget"] == {"trials": 6, "minutes": 5.0}
    # The held-out file was uploaded, and the drop is measured on it.
    assert auto["eval_dataset_id"] not in (None, dataset["id"])
    assert (auto["allow"], auto["batch_size"]) == (["quantize", "prune"], 4)

    bad = cli(api_only, tmp_path, "auto", model["id"], "--dataset", dataset["id"], "--allow", "x")
    assert bad.returncode == 5, bad.stderr
    assert "allow" in bad.stderr

    # --wait on a second search: it prints each step, then the table and the answer.
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "COLUMNS": "220",
        "PYTHONPATH": str(ROOT / "client"),
        "MODELPRESS_URL": api_only.base_url,
        "MODELPRESS_API_KEY": ADMIN_KEY,
    }
    follow = subprocess.Popen(
        [str(BIN / "modelpress"), "auto", model["id"], "--dataset", dataset["id"], "--wait"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    try:
        found = _wait_for_search(http, exclude=job_id)
        time.sleep(2.5)
        _store(api_only, found, status="running", result=_result(done=1, stopped=None, best=None))
        time.sleep(2.5)
        _store(
            api_only,
            found,
            status="running",
            result=_result(done=2, stopped=None, best="int8-dynamic@1"),
        )
        time.sleep(2.5)
        _store(
            api_only,
            found,
            status="succeeded",
            result=_result(done=3, stopped="finished", best="int8-dynamic@1"),
        )
        stdout, stderr = follow.communicate(timeout=60)
    finally:
        follow.kill()
    assert follow.returncode == 0, stderr + stdout
    lines = stdout.splitlines()
    # Its first line: the trials its first step queued (or that it is starting, when that
    # step is left to a worker's reaper pass).
    assert any("starting" in line or "trials 0 done" in line for line in lines), stdout
    assert any(
        "trials 1 done, 2 running, 0 queued, 5 left of 6; 1 from the cache" in line
        and "best so far: none qualifies yet" in line
        for line in lines
    ), stdout
    assert any(f"best so far: {BEST}" in line for line in lines), stdout
    table = stdout[stdout.index("trials of search") :]
    assert "int8-dynamic@1 (answer)" in table
    assert "1.61x [1.52-1.70]" in table and "job_trial_dynamic" in table
    assert "0.81x [0.78-0.84] SLOWER" in table
    assert f"answer: {BEST}" in stdout
    assert f"rejected int4_weight_only: {SLOWER_WHY}" in stdout

    # `jobs show` prints a search's trials too; a slower trial named best is not the answer.
    result = _result(done=3, stopped="budget_trials", best="int4-wo@0")
    _store(api_only, job_id, status="succeeded", result=result)
    shown = cli(api_only, tmp_path, "jobs", "show", job_id)
    assert shown.returncode == 0, shown.stderr
    assert "trials of search" in shown.stdout and "graph@1" in shown.stdout
    assert "nothing qualified: the search named int4-wo@0" in shown.stdout
    assert "answer:" not in shown.stdout
    assert "the trial budget was used up" in shown.stdout

    # Nothing qualified: the search hands back the graph trial's model, named as `best`.
    result["auto"]["answer"] |= {"best": "graph@1", "fallback": "graph", "message": "no gain"}
    _store(api_only, job_id, status="succeeded", result=result)
    fallback = cli(api_only, tmp_path, "jobs", "show", job_id)
    assert "nothing qualified: the answer is the graph-optimized original" in fallback.stdout
    assert "answer:" not in fallback.stdout and "(answer)" not in fallback.stdout


def _wait_for_search(http: httpx.Client, *, exclude: str) -> str:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for job in http.get("/v1/jobs").json()["items"]:
            if job["id"] != exclude and job["spec"]["passes"][0]["kind"] == "auto":
                return str(job["id"])
        time.sleep(0.2)
    raise AssertionError("the CLI submitted no search")
