"""Auto searches with a real API, real workers and the real sandbox: the answer is never a
slower or out-of-tolerance model, a resubmitted search is answered from the cache (and a
different model of the same shape is not), cancel returns the best so far, and a search
whose worker dies resumes without running a finished trial again."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.processes import Service, run_service
from tests.integration.test_end_to_end import upload, wait_for_job
from tests.models.onnx_basic import make_dataset, make_mlp

pytestmark = [pytest.mark.timeout(900)]

FINAL = {"succeeded", "failed", "canceled"}


def _auto(model_id: str, dataset_id: str, **overrides: Any) -> dict[str, Any]:
    auto = {
        "kind": "auto",
        "dataset_id": dataset_id,
        "max_drop": 0.05,
        "allow": ["quantize"],
        "budget": {"trials": 6, "minutes": 15},
        "batch_size": 8,
    }
    return {"model_id": model_id, "passes": [{**auto, **overrides}]}


def _uploaded_mlp(
    client: httpx.Client, tmp_path: Path, *, hidden: int, seed: int, samples: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A 64-input MLP and a dataset of its own outputs, uploaded: (model, dataset)."""
    model_path = make_mlp(tmp_path / "m.onnx", in_features=64, hidden=hidden, seed=seed)
    data_path = make_dataset(tmp_path / "data.npz", model_path, samples=samples)
    return upload(client, "/v1/models", model_path), upload(client, "/v1/datasets", data_path)


def _trials(client: httpx.Client, search_id: str) -> list[dict[str, Any]]:
    response = client.get("/v1/jobs", params={"parent_id": search_id, "page_size": 200})
    assert response.status_code == 200, response.text
    return response.json()["items"]


def _wait_trials(
    service: Service,
    client: httpx.Client,
    search_id: str,
    done: int,
    timeout: float = 300,
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        trials = _trials(client, search_id)
        if sum(t["status"] == "succeeded" for t in trials) >= done:
            return trials
        time.sleep(0.5)
    raise AssertionError(f"fewer than {done} trials succeeded\n{service.dump_logs()}")


def _wait_trials_final(client: httpx.Client, search_id: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while any(t["status"] not in FINAL for t in _trials(client, search_id)):
        assert time.monotonic() < deadline, _trials(client, search_id)
        time.sleep(0.5)


def _check_answer(client: httpx.Client, search: dict[str, Any]) -> dict[str, Any]:
    """What a user relies on: the answer is within the tolerance and faster by the paired
    interval; or, when nothing is, it says so and is the graph-optimized original (itself
    not slower) or the original. The search has one model to download."""
    answer = search["result"]["auto"]["answer"]
    trials = {t["id"]: t for t in _trials(client, search["id"])}
    if answer["best"] is not None:
        best = trials[answer["best_job_id"]]["summary"]
        low, high = best["speedup_interval"]["8"]
        assert best["within_tolerance"] is True, best
        if answer["fallback"] is None:
            assert low > 1.0, best
        else:
            assert answer["fallback"] == "graph" and high >= 1.0, best
        assert search["summary"]["speedup_interval"] == best["speedup_interval"]
    else:
        assert answer["fallback"] == "original" and answer["original"] is True
    if answer["fallback"] is not None:
        assert "original" in answer["message"], answer["message"]
    artifacts = client.get(f"/v1/jobs/{search['id']}/artifacts").json()
    models = [a for a in artifacts if a["kind"] == "model"]
    assert len(models) == 1, artifacts
    if answer["best"] is not None:
        # The answer's model comes with its trial's provenance manifest: the model it names
        # is the one downloaded, and its spec makes that model again.
        response = client.get(f"/v1/jobs/{search['id']}/provenance")
        assert response.status_code == 200, response.text
        manifest = response.json()
        listed = {entry["name"]: entry for entry in manifest["artifacts"]}
        assert listed[models[0]["name"]]["sha256"] == models[0]["sha256"]
        kinds = [entry["kind"] for entry in trials[answer["best_job_id"]]["spec"]["passes"]]
        assert [entry["kind"] for entry in manifest["reproduce"]["spec"]["passes"]] == kinds
    return answer


def test_a_search_answers_honestly_and_a_resubmission_comes_from_the_cache(
    embedded_service: Service, tmp_path: Path
) -> None:
    model_a = make_mlp(tmp_path / "a.onnx", in_features=64, hidden=256, seed=1)
    # Same shape, other weights: its trials must never reuse model A's measurements.
    model_b = make_mlp(tmp_path / "b.onnx", in_features=64, hidden=256, seed=2)
    data_path = make_dataset(tmp_path / "data.npz", model_a, samples=64)
    with embedded_service.client() as client:
        a = upload(client, "/v1/models", model_a)
        b = upload(client, "/v1/models", model_b)
        dataset = upload(client, "/v1/datasets", data_path)

        created = client.post("/v1/jobs", json=_auto(a["id"], dataset["id"]))
        assert created.status_code == 202, created.text
        assert created.json()["kind"] == "search"
        preflight = created.json()["result"]["auto"]["preflight"]
        assert preflight["structure"] == "mlp"
        first = wait_for_job(embedded_service, client, created.json()["id"], FINAL, 600)
        assert first["status"] == "succeeded", f"{first['error']}\n{embedded_service.dump_logs()}"
        first_answer = _check_answer(client, first)
        trials = _trials(client, first["id"])
        assert 1 <= len(trials) <= 6
        assert len({t["trial"]["key"] for t in trials}) == len(trials)
        assert all(t["kind"] == "trial" and t["parent_id"] == first["id"] for t in trials)
        # Trials are listed by their search, not among the jobs people submitted.
        listed = {
            j["id"] for j in client.get("/v1/jobs", params={"page_size": 200}).json()["items"]
        }
        assert first["id"] in listed and not listed & {t["id"] for t in trials}

        again = client.post("/v1/jobs", json=_auto(a["id"], dataset["id"])).json()
        second = wait_for_job(embedded_service, client, again["id"], FINAL, 600)
        assert second["status"] == "succeeded", second["error"]
        reused = _trials(client, second["id"])
        measured = {t["id"] for t in trials if t["status"] == "succeeded"}
        assert reused and all(t["trial"].get("cached_from") in measured for t in reused), reused
        assert second["result"]["auto"]["answer"]["best"] == first_answer["best"]
        assert second["result"]["auto"]["progress"]["cached"] == len(reused)

        other = client.post("/v1/jobs", json=_auto(b["id"], dataset["id"])).json()
        third = wait_for_job(embedded_service, client, other["id"], FINAL, 600)
        assert third["status"] == "succeeded", third["error"]
        assert not any(t["trial"].get("cached_from") for t in _trials(client, third["id"]))
        _check_answer(client, third)


def test_cancel_returns_the_best_model_so_far(embedded_service: Service, tmp_path: Path) -> None:
    with embedded_service.client() as client:
        model, dataset = _uploaded_mlp(client, tmp_path, hidden=512, seed=3, samples=64)
        spec = _auto(model["id"], dataset["id"], budget={"trials": 30, "minutes": 15})
        search = client.post("/v1/jobs", json=spec).json()
        _wait_trials(embedded_service, client, search["id"], done=2)

        canceled = client.post(f"/v1/jobs/{search['id']}/cancel")
        assert canceled.status_code == 202, canceled.text
        ended = wait_for_job(embedded_service, client, search["id"], FINAL, 120)
        assert ended["status"] == "canceled"
        assert ended["result"]["auto"]["stopped"] == "canceled"
        _check_answer(client, ended)
        # No trial of a canceled search runs on.
        _wait_trials_final(client, search["id"])


def test_a_search_out_of_minutes_answers_with_the_best_so_far(
    embedded_service: Service, tmp_path: Path
) -> None:
    with embedded_service.client() as client:
        # Enough samples that every trial evaluates for a while, and 1.2 s for a search whose
        # trials one worker runs one after the other: however fast the worker, the minutes
        # end before the candidates do.
        model, dataset = _uploaded_mlp(client, tmp_path, hidden=256, seed=5, samples=1024)
        spec = _auto(model["id"], dataset["id"], budget={"trials": 30, "minutes": 0.02})
        search = client.post("/v1/jobs", json=spec).json()
        ended = wait_for_job(embedded_service, client, search["id"], FINAL, 180)
        assert ended["status"] == "succeeded", ended["error"]
        auto = ended["result"]["auto"]
        assert auto["stopped"] == "budget_minutes"
        assert auto["progress"]["left"] > 0  # the trial budget was not what ended it
        _check_answer(client, ended)
        _wait_trials_final(client, search["id"])


@pytest.fixture()
def crash_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """A service of its own: its worker is killed."""
    yield from run_service(
        tmp_path_factory.mktemp("crash-service"),
        None,
        {"MODELPRESS_HEARTBEAT_TIMEOUT_S": "30", "MODELPRESS_REAPER_INTERVAL_S": "0.5"},
    )


@pytest.mark.slow
def test_a_search_resumes_after_its_worker_dies_without_repeating_trials(
    crash_service: Service, tmp_path: Path
) -> None:
    with crash_service.client() as client:
        model, dataset = _uploaded_mlp(client, tmp_path, hidden=256, seed=4, samples=64)
        search = client.post("/v1/jobs", json=_auto(model["id"], dataset["id"])).json()
        before = _wait_trials(crash_service, client, search["id"], done=2)
        finished = {t["id"]: t["trial"]["key"] for t in before if t["status"] == "succeeded"}

        # The worker and its job process die at once; nothing is cleaned up.
        crash_service.processes["worker"].stop(signal.SIGKILL)
        crash_service.start_worker("worker2")
        ended = wait_for_job(crash_service, client, search["id"], FINAL, 600)
        assert ended["status"] == "succeeded", f"{ended['error']}\n{crash_service.dump_logs()}"
        _check_answer(client, ended)
        after = _trials(client, search["id"])
        keys = [t["trial"]["key"] for t in after]
        assert len(keys) == len(set(keys)), keys
        for trial in after:
            if trial["id"] in finished:
                # Finished before the crash: kept as it was, never run again.
                assert trial["status"] == "succeeded" and trial["attempts"] == 1
        assert set(finished.values()) <= set(keys)
