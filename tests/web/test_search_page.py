# ruff: noqa: RUF001, RUF003 (the pages say "1.94×": the tests read them so)
"""The page of an auto search: its progress while it runs, its answer, every trial linked to
its own page, the rejected families with their reasons and the preflight, read from the
search job's `result.auto` as the search writes it (fast: no browser, no worker)."""

from __future__ import annotations

import copy
import json
import re
from datetime import UTC, datetime, timedelta
from html import unescape
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.web.conftest import sign_in
from tests.web.jobs_data import project_id_of, store_artifact, submit, upload_mlp

GOOD_MESSAGE = (
    "int8 static (transformer preset): 1.94x faster at batch 8, fidelity drop 0.0021 "
    "(limit 0.01), 3.9x smaller"
)
DYNAMIC_WHY = "slower here: 0.74x at batch 8 (95% interval 0.70x-0.78x)"


def _trial(key: str, family: str, rung: int, status: str, **numbers: Any) -> dict[str, Any]:
    return {
        "key": key,
        "family": family,
        "rung": rung,
        "status": status,
        "job_id": f"job_trial_{key.replace('@', '_').replace('-', '_')}",
        "why": f"{family} is worth a try",
        "speedup": None,
        "interval": None,
        "size_ratio": None,
        "drop": None,
        "within_tolerance": None,
        "verdict": None,
        "error": None,
        "cached": False,
    } | numbers


TRIALS = [
    _trial(
        "int8-static-tr@1",
        "int8_static_transformer",
        1,
        "succeeded",
        speedup=1.94,
        interval=[1.88, 2.01],
        size_ratio=0.256,
        drop=0.0021,
        within_tolerance=True,
        verdict="faster and within tolerance",
    ),
    _trial(
        "int8-dynamic@0",
        "int8_dynamic",
        0,
        "succeeded",
        speedup=0.74,
        interval=[0.70, 0.78],
        size_ratio=0.26,
        drop=0.004,
        within_tolerance=True,
        verdict="slower than the original",
        cached=True,
    ),
    _trial(
        "graph@1",
        "graph",
        1,
        "succeeded",
        speedup=1.02,
        interval=[0.98, 1.05],
        size_ratio=1.0,
        drop=0.0,
        within_tolerance=True,
    ),
    _trial("fp16@0", "fp16", 0, "failed", error="unsupported_error: no fp16 kernels here"),
    _trial("prune-30@0", "prune_structured", 0, "running"),
]


def search_result(*, stopped: str | None, best: str | None, fallback: str | None) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {
        "auto": {
            "preflight": {
                "structure": "transformer",
                "facts": {"opset": 17, "has_labels": False, "metric": "fidelity", "samples": 64},
                "applicable": {"int8_static": "a transformer: the preset keeps softmax in float"},
                "skipped": {"distill": "the dataset has no labels to fine-tune on"},
            },
            "progress": {
                "done": 7,
                "running": 2,
                "queued": 1,
                "left": 14,
                "budget_trials": 24,
                "minutes": 30.0,
                "started_at": (now - timedelta(minutes=10)).isoformat(),
                "deadline_at": (now + timedelta(minutes=20)).isoformat(),
                "cached": 3,
            },
            "stopped": stopped,
            "answer": {
                # As the search writes it: with the graph fallback, `best` is the graph trial.
                "best": "graph@1" if fallback == "graph" else best,
                "best_job_id": "job_trial_graph_1"
                if fallback == "graph"
                else ("job_trial_int8_static_tr_1" if best else None),
                "original": best is None and fallback != "graph",
                "fallback": fallback,
                "message": GOOD_MESSAGE if best else "nothing was faster within the tolerance",
                "pareto": ["int8-static-tr@1", "graph@1"],
                "rejected": {"int8_dynamic": DYNAMIC_WHY},
                "trials": copy.deepcopy(TRIALS),
            },
        }
    }


@pytest.fixture
def search(client: TestClient, tmp_path: Path) -> str:
    model_id, dataset_id = upload_mlp(client, tmp_path / "files")
    spec = {
        "model_id": model_id,
        "passes": [
            {
                "kind": "auto",
                "dataset_id": dataset_id,
                "max_drop": 0.01,
                "metric": "fidelity",
                "budget": {"trials": 24, "minutes": 30},
            }
        ],
    }
    job_id = submit(client, spec)
    # The model the search leaves as its own once it ends (the answer's, or the fallback).
    store_artifact(
        project_id_of(client),
        job_id,
        kind="model",
        name="model.onnx",
        content=b"the chosen model",
        folder=tmp_path,
    )
    return job_id


def store(job_id: str, *, status: str, result: dict[str, Any] | None) -> None:
    """As the search leaves its job after a step: its status and its `result`."""
    from core.db import session_factory
    from core.tables import Job

    with session_factory()() as session:
        row = session.get(Job, job_id)
        assert row is not None
        row.status = status
        row.result = result
        if status in ("succeeded", "failed", "canceled"):
            row.finished_at = datetime.now(UTC)
        session.commit()


def _text(html: str) -> str:
    return re.sub(r"\s+", " ", unescape(re.sub(r"<[^>]+>", " ", html)))


def _section(html: str, element_id: str) -> str:
    found = re.search(rf'<(section|div|p)[^>]*id="{element_id}".*?</\1>', html, re.S)
    assert found, f"no #{element_id} on the page"
    return _text(found.group(0))


def test_a_search_just_submitted_says_it_is_starting(
    pages: TestClient, client: TestClient, search: str
) -> None:
    # As the submission leaves it before its first step (which runs right after the commit,
    # or at the next reaper pass when that failed): the preflight, no progress yet.
    preflight = client.get(f"/v1/jobs/{search}").json()["result"]["auto"]["preflight"]
    store(
        search,
        status="queued",
        result={
            "auto": {"preflight": preflight, "progress": None, "stopped": None, "answer": None}
        },
    )
    sign_in(pages)
    page = pages.get(f"/jobs/{search}")
    assert page.status_code == 200, page.text
    assert "The search is starting" in _section(page.text, "search-progress")
    assert 'id="trials-table"' not in page.text
    assert f'hx-get="/jobs/{search}/live"' in page.text
    assert "Cancel the search (keeps the best so far)" in page.text


def test_a_running_search_shows_its_progress_best_so_far_and_polls(
    pages: TestClient, client: TestClient, search: str
) -> None:
    store(
        search,
        status="running",
        result=search_result(stopped=None, best="int8-static-tr@1", fallback=None),
    )
    sign_in(pages)
    live = pages.get(f"/jobs/{search}/live")
    assert live.status_code == 200
    progress = _section(live.text, "search-progress")
    assert (
        "Trials: 7 done, 2 running, 1 queued, 14 left of a budget of 24 (3 from the cache"
        in progress
    )
    assert re.search(r"Time: about (19|20) minutes left \(until \d\d:\d\d UTC\)", progress)
    assert f"Best so far: {GOOD_MESSAGE}" in progress
    # Still running: no final answer yet, and the body keeps polling.
    assert 'id="search-answer"' not in live.text
    assert f'hx-get="/jobs/{search}/live"' in live.text


def test_a_finished_search_shows_its_answer_and_links_every_trial(
    pages: TestClient, client: TestClient, search: str
) -> None:
    store(
        search,
        status="succeeded",
        result=search_result(stopped="finished", best="int8-static-tr@1", fallback=None),
    )
    sign_in(pages)
    page = pages.get(f"/jobs/{search}").text
    answer = _section(page, "search-answer")
    assert "Answer: the best model found is int8-static-tr@1 (int8_static_transformer)" in answer
    assert GOOD_MESSAGE in answer
    assert "every promising candidate was measured" in answer
    assert "Trials: 7 done of a budget of 24 (3 from the cache" in _section(page, "search-progress")
    assert "Download the best model found (16 B)" in page
    assert "hx-get" not in page

    table = re.search(r'<table class="data" id="trials-table">.*?</table>', page, re.S)
    assert table
    rows = re.findall(r"<tr[^>]*>.*?</tr>", table.group(0), re.S)[1:]
    assert len(rows) == len(TRIALS)
    for trial, row in zip(TRIALS, rows, strict=True):
        assert f'<a href="/jobs/{trial["job_id"]}">{trial["key"]}</a>' in row
    by_key = {t["key"]: _text(r) for t, r in zip(TRIALS, rows, strict=True)}
    assert "the answer" in by_key["int8-static-tr@1"]
    assert "1.94× 95% interval 1.88×–2.01× 0.256 0.0021 yes no" in by_key["int8-static-tr@1"]
    assert "slower than the original" in by_key["int8-dynamic@0"]
    assert "cached" in by_key["int8-dynamic@0"]
    assert "◆ Pareto set" in by_key["graph@1"]
    assert "no fp16 kernels here" in by_key["fp16@0"]

    assert f"int8_dynamic {DYNAMIC_WHY}" in _section(page, "search-rejected")
    preflight = _section(page, "search-preflight")
    assert "structure: transformer" in preflight
    assert "distill the dataset has no labels to fine-tune on" in preflight
    assert "opset 17" in preflight

    chart = re.search(r'id="chart-search-data">(.*?)</script>', page, re.S)
    assert chart, "no trials chart"
    series = {s["name"]: s for s in json.loads(unescape(chart.group(1)))["series"]}
    assert [p["name"] for p in series["The answer"]["data"]] == ["int8-static-tr@1"]
    assert [p["name"] for p in series["Pareto set"]["data"]] == ["graph@1"]
    assert series["The answer"]["data"][0]["value"] == [1.94, 0.256, "0.0021"]
    axis = json.loads(unescape(chart.group(1)))["xAxis"]
    # The axis ends are labelled: whole tenths around the points and 1x, not 0.542.
    assert [round(axis[end] * 10, 6) % 1 for end in ("min", "max")] == [0, 0]
    assert axis["min"] <= 1 <= axis["max"]

    # No worker attempt ran the search itself: its timeline says where the work went.
    assert "attempt 0" not in page
    assert "Started" in _text(page) and "its trials run as jobs of their own" in page
    assert "with a fidelity drop of at most 0.01" in _text(page)
    # The jobs list names it as a search, with its goal.
    listed = _text(pages.get("/jobs").text)
    assert "auto search for latency" in listed


def test_nothing_qualified_is_said_and_never_shown_as_a_win(
    pages: TestClient, client: TestClient, search: str
) -> None:
    store(
        search,
        status="succeeded",
        result=search_result(stopped="budget_minutes", best=None, fallback="graph"),
    )
    sign_in(pages)
    page = pages.get(f"/jobs/{search}").text
    assert '<section class="verdict neutral"' in page
    answer = _section(page, "search-answer")
    assert "Nothing qualified: the answer is the graph-optimized original" in answer
    assert "The time budget ran out" in answer
    assert "Answer:" not in answer and "best model found" not in answer
    assert "<strong>the answer</strong>" not in page
    assert "Download the graph-optimized original" in page

    store(
        search,
        status="succeeded",
        result=search_result(stopped="finished", best=None, fallback="original"),
    )
    assert "Nothing qualified: the answer is the original" in _section(
        pages.get(f"/jobs/{search}").text, "search-answer"
    )


def test_a_slower_trial_named_as_best_is_not_shown_as_the_answer(
    pages: TestClient, client: TestClient, search: str
) -> None:
    result = search_result(stopped="finished", best="int8-dynamic@0", fallback=None)
    result["auto"]["answer"]["message"] = "int8 dynamic: 0.74x faster at batch 8"
    store(search, status="succeeded", result=result)
    sign_in(pages)
    page = pages.get(f"/jobs/{search}").text
    answer = _section(page, "search-answer")
    assert "Nothing qualified: the answer is the original" in answer
    assert "do not show it faster than the original" in answer
    assert "0.74x faster" not in page
    assert '<section class="verdict better"' not in page
    assert 'id="download-model"' not in page


def test_a_trials_page_leads_back_to_its_search(
    pages: TestClient, client: TestClient, search: str
) -> None:
    trials = client.get("/v1/jobs", params={"parent_id": search}).json()["items"]
    assert trials
    sign_in(pages)
    page = pages.get(f"/jobs/{trials[0]['id']}")
    assert page.status_code == 200, page.text
    text = _text(page.text)
    assert f"trial {trials[0]['trial']['key']} of the search {search}" in text
    assert f'href="/jobs/{search}"' in page.text
    # The dashboard's job list leaves trials to their search's page, as the API does.
    listed = pages.get("/jobs").text
    assert search in listed and trials[0]["id"] not in listed
