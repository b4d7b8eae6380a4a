# ruff: noqa: RUF001, RUF003 (the pages say "2.30×" and "1.1–1.3": the tests read them so)
"""The jobs list, a job's page and the compare page, rendered from jobs that a worker
finished (fast: no browser, no worker process)."""

from __future__ import annotations

import hashlib
import json
import re
from html import unescape
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi.testclient import TestClient

from tests.web.conftest import sign_in
from tests.web.jobs_data import (
    SUGGESTED_NODE,
    WORKER_RESULTS,
    finish_like_a_worker,
    project_id_of,
    quantize_spec,
    submit,
    upload_mlp,
)


@pytest.fixture
def finished(client: TestClient, tmp_path: Path) -> dict[str, str]:
    """Three succeeded jobs of one model (faster, slower, unclear) and a queued one."""
    model_id, dataset_id = upload_mlp(client, tmp_path / "files")
    project_id = project_id_of(client)
    ids: dict[str, str] = {"model_id": model_id, "dataset_id": dataset_id}
    for which in ("faster", "slower", "unclear"):
        job_id = submit(client, quantize_spec(model_id, dataset_id))
        artifacts = finish_like_a_worker(
            job_id, project_id, which, tmp_path / which, dataset_id=dataset_id
        )
        ids[which] = job_id
        ids[f"{which}_model"] = artifacts["model"]
        ids[f"{which}_sensitivity"] = artifacts["sensitivity"]
    ids["queued"] = submit(client, quantize_spec(model_id, dataset_id))
    return ids


@pytest.fixture
def signed_in(pages: TestClient) -> str:
    return sign_in(pages)


def _text(html: str) -> str:
    """The page's words, tags dropped and spaces squeezed, as a reader sees them."""
    return re.sub(r"\s+", " ", unescape(re.sub(r"<[^>]+>", " ", html)))


def _verdict(html: str) -> tuple[str, str]:
    found = re.search(r'<section class="verdict (\w+)".*?</section>', html, re.S)
    assert found, "the page shows no verdict"
    return found.group(1), _text(found.group(0))


def test_a_faster_result_says_by_how_much_with_its_interval(
    pages: TestClient, signed_in: str, finished: dict[str, str]
) -> None:
    page = pages.get(f"/jobs/{finished['faster']}")
    assert page.status_code == 200
    tone, words = _verdict(page.text)
    assert tone == "better"
    assert "Better than the original: 11.5× smaller, up to 2.30× faster, as accurate" in words
    assert "2.30× faster at batch 1 (95% interval 2.24×–2.48×)" in words
    assert "1.82× faster at batch 8 (95% interval 1.68×–2.04×)" in words
    assert "slower" not in words.lower()


def test_a_slower_result_is_shown_as_slower_first(
    pages: TestClient, signed_in: str, finished: dict[str, str]
) -> None:
    page = pages.get(f"/jobs/{finished['slower']}")
    tone, words = _verdict(page.text)
    assert tone == "worse"
    # In words, before anything else: not by colour alone.
    assert words.strip().startswith(
        "Worse than the original: Slower than the original: 1.26× slower at batch 1 "
        "(95% interval 1.14×–1.34× slower)"
    )
    assert "Worse: 1.23× slower at batch 8" in words
    assert "2.49× smaller" in words  # the gain is still said, after the loss
    row = re.search(r'<tr class="speed worse">.*?</tr>', page.text, re.S)
    assert row and "1.26× slower at batch 1" in _text(row.group(0))


def test_a_result_with_no_measurable_speed_difference_does_not_claim_one(
    pages: TestClient, signed_in: str, finished: dict[str, str]
) -> None:
    tone, words = _verdict(pages.get(f"/jobs/{finished['unclear']}").text)
    assert tone == "better"  # smaller and as accurate...
    assert "no measurable speed difference at batch 1: 0.90×" in words  # ...not faster
    assert "faster" not in words.split("The worker")[0]


def test_the_page_has_the_numbers_charts_stages_and_artifacts(
    pages: TestClient, signed_in: str, finished: dict[str, str]
) -> None:
    html = pages.get(f"/jobs/{finished['faster']}").text
    for chart in ("size", "latency", "speedup", "throughput", "memory", "accuracy"):
        element = re.search(rf'<div class="chart" id="chart-{chart}"[^>]*>', html)
        assert element, f"no {chart} chart"
        assert 'role="img"' in element.group(0) and 'aria-label="' in element.group(0)
        data = re.search(
            rf'<script type="application/json" id="chart-{chart}-data">(.*?)</script>', html, re.S
        )
        assert data and json.loads(data.group(1))["series"]
    speedup = json.loads(
        re.search(r'id="chart-speedup-data">(.*?)</script>', html, re.S).group(1)  # type: ignore[union-attr]
    )
    assert speedup["series"][1]["data"] == [[0, 2.24, 2.478], [1, 1.68, 2.043]]
    # A two-pass pipeline: a waterfall of size and latency from pass to pass.
    assert 'id="chart-stage-size"' in html and 'id="chart-stage-latency"' in html
    assert "1: prune / structured" in _text(html) and "2: quantize / dynamic" in _text(html)
    table = _text(
        re.search(r'<table class="data" id="comparison-table">.*?</table>', html, re.S).group(0)
    )  # type: ignore[union-attr]
    assert "Size 300.4 KB 26.1 KB 8.7% of the original" in table
    assert "Speed-up, batch 8 1× 1.82×" in table
    for name in ("optimized.onnx", "report.json", "pass2-sensitivity.json"):
        assert f">{name}</a>" in html
    assert 'hx-trigger="every' not in html  # a final job's page does not poll


def test_the_suggested_exclusion_opens_the_composer_with_the_pass_to_run(
    pages: TestClient, signed_in: str, finished: dict[str, str]
) -> None:
    html = pages.get(f"/jobs/{finished['slower']}").text
    link = re.search(
        r'<a class="button" id="rerun-1" href="([^"]+)">Exclude these and run again', html
    )
    assert link, "no exclusion button"
    url = urlsplit(unescape(link.group(1)))
    assert url.path == "/jobs/new"
    spec = json.loads(parse_qs(url.query)["spec"][0])
    assert spec["model_id"] == finished["model_id"]
    (quantize,) = spec["passes"]
    assert quantize["exclude"] == {"nodes": [SUGGESTED_NODE]} and quantize["scope"] == "partial"
    assert quantize["calibration"]["dataset_id"] == finished["dataset_id"]
    assert spec["evaluate"]["dataset_id"] == finished["dataset_id"]
    # The sensitivity chart marks what is suggested, in its words too.
    chart = re.search(r'id="chart-sensitivity-1"[^>]*aria-label="([^"]+)"', html)
    assert chart and "(suggested to exclude)" in unescape(chart.group(1))
    # A report that suggests nothing offers no button.
    assert "Exclude these and run again" not in pages.get(f"/jobs/{finished['faster']}").text


def test_artifacts_download_from_the_page(
    pages: TestClient, signed_in: str, finished: dict[str, str]
) -> None:
    url = f"/jobs/{finished['slower']}/artifacts/{finished['slower_model']}"
    response = pages.get(url)
    assert response.status_code == 200
    assert response.content == f"optimized model of {finished['slower']}".encode()
    assert response.headers["etag"] == f'"{hashlib.sha256(response.content).hexdigest()}"'
    assert pages.get(url, headers={"Range": "bytes=0-8"}).content == b"optimized"
    # An artifact of another job of the project is not this job's.
    other = f"/jobs/{finished['faster']}/artifacts/{finished['slower_model']}"
    assert pages.get(other).status_code == 404


def test_a_running_job_page_polls_until_the_job_is_final(
    client: TestClient, pages: TestClient, signed_in: str, finished: dict[str, str]
) -> None:
    html = pages.get(f"/jobs/{finished['queued']}").text
    assert f'hx-get="/jobs/{finished["queued"]}/live" hx-trigger="every 2s"' in html
    live = pages.get(f"/jobs/{finished['queued']}/live", headers={"HX-Request": "true"})
    assert live.status_code == 200 and live.text.lstrip().startswith(("{", "<div"))
    assert 'id="job-body"' in live.text and "<html" not in live.text
    assert "hx-trigger" in live.text
    assert client.post(f"/v1/jobs/{finished['queued']}/cancel").status_code == 202
    live = pages.get(f"/jobs/{finished['queued']}/live", headers={"HX-Request": "true"})
    assert "hx-trigger" not in live.text and "Canceled: canceled" in _text(live.text)


def test_the_list_refreshes_its_rows_only_while_a_job_is_active(
    client: TestClient, pages: TestClient, signed_in: str, finished: dict[str, str]
) -> None:
    html = pages.get("/jobs").text
    assert 'hx-get="/jobs/rows?" hx-trigger="every 2s"' in html or 'hx-get="/jobs/rows?' in html
    rows = pages.get("/jobs/rows", headers={"HX-Request": "true"})
    assert rows.text.lstrip().startswith("<tbody") and "hx-trigger" in rows.text
    assert finished["queued"] in rows.text
    client.post(f"/v1/jobs/{finished['queued']}/cancel")
    rows = pages.get("/jobs/rows", headers={"HX-Request": "true"})
    assert "hx-trigger" not in rows.text
    # Fragments need the session as pages do.
    other = TestClient(pages.app)
    assert other.get("/jobs/rows", headers={"HX-Request": "true"}).status_code == 401
    assert (
        other.get(f"/jobs/{finished['queued']}/live", headers={"HX-Request": "true"}).status_code
        == 401
    )


def test_the_list_says_what_each_job_is_and_its_result(
    client: TestClient, pages: TestClient, signed_in: str, finished: dict[str, str]
) -> None:
    html = {
        key: row
        for row in re.findall(r"<tr>.*?</tr>", pages.get("/jobs").text, re.S)
        for key in ("faster", "slower", "queued")
        if finished[key] in row
    }
    for key in ("faster", "slower"):
        verdict = client.get(f"/v1/jobs/{finished[key]}").json()["summary"]["verdict"]
        assert f"quantize/static {verdict}" in _text(html[key]), _text(html[key])
    # A finished job shows no progress bar; a queued one shows its bar at 0%.
    assert "<progress" not in html["faster"] and "100%" not in _text(html["faster"])
    assert "<progress" in html["queued"] and "0%" in _text(html["queued"])


def test_filters_and_pages(
    pages: TestClient, signed_in: str, finished: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    succeeded = pages.get("/jobs?status=succeeded").text
    assert all(finished[k] in succeeded for k in ("faster", "slower", "unclear"))
    assert finished["queued"] not in succeeded
    assert finished["queued"] in pages.get(f"/jobs?model_id={finished['model_id']}").text
    assert "No jobs match these filters." in pages.get("/jobs?model_id=mdl_none").text
    today = pages.get("/jobs?created_from=2000-01-01&created_to=2999-12-31&status=queued").text
    assert finished["queued"] in today and finished["faster"] not in today
    assert finished["queued"] not in pages.get("/jobs?created_to=2000-01-01").text
    bad = pages.get("/jobs?created_from=yesterday")
    assert bad.status_code == 422 and "From must be a date such as 2026-11-30" in bad.text
    assert 'value="yesterday"' in bad.text  # the form keeps what was typed

    monkeypatch.setattr("web.routes.jobs.PAGE_SIZE", 3)
    first = pages.get("/jobs?status=succeeded").text
    assert sum(finished[k] in first for k in ("faster", "slower", "unclear")) == 3
    everything = pages.get("/jobs").text
    next_url = unescape(re.search(r'<a href="([^"]+)" rel="next">Next page', everything).group(1))  # type: ignore[union-attr]
    second = pages.get(next_url).text
    shown = [k for k in ("faster", "slower", "unclear", "queued") if finished[k] in second]
    assert shown == ["faster"], shown  # the oldest of the four, alone on page two
    assert 'href="/jobs">First page' in second or ">First page</a>" in second


def test_cancel_and_retry_need_the_csrf_token(
    client: TestClient, pages: TestClient, signed_in: str, finished: dict[str, str]
) -> None:
    queued = finished["queued"]
    refused = pages.post(f"/jobs/{queued}/cancel", data={}, follow_redirects=False)
    assert refused.status_code == 403
    assert client.get(f"/v1/jobs/{queued}").json()["status"] == "queued"

    done = pages.post(
        f"/jobs/{queued}/cancel",
        data={"csrf_token": signed_in, "next": "/jobs?status=canceled"},
        follow_redirects=False,
    )
    assert done.status_code == 303 and done.headers["location"] == "/jobs?status=canceled"
    assert client.get(f"/v1/jobs/{queued}").json()["status"] == "canceled"

    assert pages.post(f"/jobs/{queued}/retry", data={}, follow_redirects=False).status_code == 403
    retried = pages.post(
        f"/jobs/{queued}/retry", data={"csrf_token": signed_in}, follow_redirects=False
    )
    assert retried.status_code == 303
    new_id = retried.headers["location"].removeprefix("/jobs/")
    assert client.get(f"/v1/jobs/{new_id}").json()["retry_of"] == queued
    assert f"Retried as {new_id}" in _text(pages.get(f"/jobs/{queued}").text)

    # The API's answer for a job that cannot be retried, as a page.
    again = pages.post(f"/jobs/{finished['faster']}/retry", data={"csrf_token": signed_in})
    assert again.status_code == 409
    assert "only failed or canceled jobs can be retried" in again.text


def test_compare_marks_the_pareto_best_and_refuses_mixed_models(
    client: TestClient,
    pages: TestClient,
    signed_in: str,
    finished: dict[str, str],
    tmp_path: Path,
) -> None:
    page = pages.get(f"/compare?model_id={finished['model_id']}&batch=8")
    assert page.status_code == 200
    table = re.search(r'<table class="data" id="compare-table">.*?</table>', page.text, re.S)
    assert table
    rows = {
        job: _text(row)
        for row in re.findall(r"<tr.*?</tr>", table.group(0), re.S)[1:]
        for job in ("faster", "slower", "unclear")
        if finished[job] in row
    }
    # At batch 8: faster 1.82× and 8.7% of the size with no drop beats both others.
    assert "Pareto-best" in rows["faster"]
    assert "Pareto-best" not in rows["unclear"]
    assert "slower than the original" in rows["slower"]
    assert f"/jobs/{finished['faster']}/artifacts/{finished['faster_model']}" in table.group(0)
    data = json.loads(
        re.search(r'id="chart-compare-data">(.*?)</script>', page.text, re.S).group(1)  # type: ignore[union-attr]
    )
    best, others = data["series"]
    assert [p["value"][0] for p in best["data"]] == [1.817]
    # Drawn over the others: a job with the same numbers does not hide the diamond.
    assert best["z"] > others["z"]

    picked = pages.get(f"/compare?job={finished['faster']}&job={finished['slower']}")
    assert picked.status_code == 200 and 'id="chart-compare"' in picked.text

    other_model, other_dataset = upload_mlp(client, tmp_path / "other")
    foreign = submit(client, quantize_spec(other_model, other_dataset))
    mixed = pages.get(f"/compare?job={finished['faster']}&job={foreign}")
    assert mixed.status_code == 422
    assert "These jobs optimize different models" in unescape(mixed.text)
    empty = pages.get(f"/compare?model_id={other_model}")
    assert "There is no succeeded job to compare here yet." in unescape(empty.text)


def test_another_projects_pages_fragments_files_and_buttons_are_not_found(
    client: TestClient, pages: TestClient, finished: dict[str, str]
) -> None:
    project = client.post("/v1/projects", json={"name": "team-b"}).json()
    key = client.post(
        "/v1/keys", json={"project_id": project["id"], "name": "b", "scopes": ["admin"]}
    ).json()["key"]
    token = sign_in(pages, key)
    job = finished["slower"]
    batch = client.post(
        "/v1/batches", json={"jobs": [quantize_spec(finished["model_id"], finished["dataset_id"])]}
    ).json()
    for url in (
        f"/jobs/{job}",
        f"/jobs/{job}/live",
        f"/jobs/{job}/artifacts/{finished['slower_model']}",
        f"/jobs/{job}/artifacts/{finished['slower_sensitivity']}",
        f"/compare?job={job}",
        f"/compare?batch_id={batch['id']}",
        f"/compare?model_id={finished['model_id']}",
    ):
        response = pages.get(url)
        assert response.status_code == 404, url
        assert "not found" in response.text.lower() and "optimized model of" not in response.text
    for action in ("cancel", "retry"):
        target = finished["queued"] if action == "cancel" else job
        response = pages.post(f"/jobs/{target}/{action}", data={"csrf_token": token})
        assert response.status_code == 404, action
    assert client.get(f"/v1/jobs/{finished['queued']}").json()["status"] == "queued"
    assert finished["faster"] not in pages.get("/jobs").text


def test_a_failed_job_shows_its_error_and_what_it_got_done(
    client: TestClient, pages: TestClient, signed_in: str, finished: dict[str, str]
) -> None:
    from core import jobstate
    from core.db import session_factory
    from core.tables import JobStatus

    job_id = finished["queued"]
    with session_factory()() as session:
        attempt = jobstate.claim(session, job_id, "test-worker")
        assert attempt == 1
        stages = {"stages": WORKER_RESULTS["faster"]["result"]["stages"][:1]}
        assert jobstate.record_result(session, job_id, attempt, result=stages)
        assert jobstate.finish(
            session,
            job_id,
            attempt,
            status=JobStatus.failed,
            error_type="quantization_failed",
            error_message="pass 2 (quantize): the model has no node that can be quantized",
        )
        session.commit()
    html = pages.get(f"/jobs/{job_id}").text
    words = _text(html)
    assert "Failed: quantization_failed" in words
    assert "the model has no node that can be quantized" in words
    assert "Started" in words and "attempt 1 of 3" in words
    assert '<section class="verdict' not in html  # no result, no verdict
    assert "1: prune / structured" in words  # the pass it finished before failing
    assert ">Retry this job</button>" in html and "Cancel this job" not in html


def test_a_job_no_worker_can_take_says_so_on_its_page_and_in_the_list(
    client: TestClient, pages: TestClient, signed_in: str, tmp_path: Path
) -> None:
    from tests.api.helpers import upload_model
    from tests.models.onnx_basic import make_mlp

    model = upload_model(client, make_mlp(tmp_path / "mlp.onnx"))
    spec = {
        "model_id": model["id"],
        "passes": [{"kind": "quantize", "method": "dynamic"}],
        "benchmark": {"device": "cuda"},
    }
    job = client.post("/v1/jobs", json=spec).json()
    page = _text(pages.get(f"/jobs/{job['id']}").text)
    assert "Waiting for a worker: no live worker serves the 'gpu' queue" in page
    listed = _text(pages.get("/jobs").text)
    assert "waiting: no live worker serves the 'gpu' queue" in listed


def test_a_job_whose_files_retention_removed_says_so_and_keeps_its_numbers(
    pages: TestClient, signed_in: str, finished: dict[str, str]
) -> None:
    from datetime import timedelta

    from core.retention import expire_artifacts
    from core.storage import get_storage

    job_id = finished["faster"]
    before = pages.get(f"/jobs/{job_id}").text
    assert "Download the optimized model" in before and "removed by the retention" not in before
    expire_artifacts(storage=get_storage(), keep_for=timedelta(0))
    after = pages.get(f"/jobs/{job_id}").text
    assert "The files of this job were removed by the retention setting" in _text(after)
    assert "Download the optimized model" not in after
    assert _verdict(after) == _verdict(before)  # the numbers stay
