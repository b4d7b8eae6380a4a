"""A team deciding what to ship, in a real browser against a real API and worker: watch a
job finish without reloading, read its verdict and charts, download its model, open the
suggested exclusion, compare a sweep, cancel and retry, and find nothing of another project."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Browser, Page, expect

from tests.integration.processes import Service
from tests.integration.test_end_to_end import upload
from tests.models.sensitive import SENSITIVE_NODE, make_inputs, make_outlier_mlp
from tests.web.screens import keep_screenshot
from tests.web.test_browser_signin import browser_sign_in

#: A short benchmark: the page is under test, not the timing.
BENCHMARK = {"batch_sizes": [1, 8], "warmup": 2, "iterations": 10}
#: A worker needs a while for its first job (it loads torch); the page must wait as long.
FINISH_TIMEOUT_MS = 180_000


def assert_accessible(page: Page) -> None:
    """No serious or critical axe-core violation, and nothing wider than a phone at 390 px."""
    results = Axe().run(page)
    serious = [v for v in results.response["violations"] if v["impact"] in {"serious", "critical"}]
    assert not serious, results.generate_report()
    size = page.viewport_size
    page.set_viewport_size({"width": 390, "height": 844})
    try:
        # Charts redraw to the new width on the window's resize event: give them a moment.
        page.wait_for_function("document.documentElement.scrollWidth <= 390", timeout=5000)
    finally:
        if size:
            page.set_viewport_size(size)


def _quantize(model_id: str, dataset_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "model_id": model_id,
        "passes": [
            {
                "kind": "quantize",
                "method": "static",
                "calibration": {"dataset_id": dataset_id, "samples": 32},
                **extra,
            }
        ],
        "evaluate": {"dataset_id": dataset_id, "max_drop": 0.01},
        "benchmark": BENCHMARK,
    }


def test_watch_read_download_explain_compare_cancel_and_retry(
    page: Page, browser: Browser, dashboard: Service, tmp_path: Path
) -> None:
    try:
        _walk(page, browser, dashboard, tmp_path)
    except BaseException:
        print(dashboard.dump_logs())  # the server's side of what went wrong
        raise


def _walk(page: Page, browser: Browser, dashboard: Service, tmp_path: Path) -> None:
    with dashboard.client() as api:
        model = upload(api, "/v1/models", make_outlier_mlp(tmp_path / "outlier.onnx"))
        dataset = upload(api, "/v1/datasets", make_inputs(tmp_path / "outlier.npz"))
        job = api.post("/v1/jobs", json=_quantize(model["id"], dataset["id"])).json()
        # A sweep of the same model, run after it: three ways to quantize it.
        sweep = api.post(
            "/v1/batches",
            json={
                "name": "ways to quantize",
                "jobs": [
                    {**_quantize(model["id"], dataset["id"]), "labels": {"method": "static"}},
                    {
                        **_quantize(model["id"], dataset["id"], per_channel=True),
                        "labels": {"method": "static per-channel"},
                    },
                    {
                        "model_id": model["id"],
                        "passes": [{"kind": "quantize", "method": "dynamic"}],
                        "evaluate": {"dataset_id": dataset["id"], "max_drop": 0.01},
                        "benchmark": BENCHMARK,
                        "labels": {"method": "dynamic"},
                    },
                ],
            },
        ).json()

    # Watch it finish on its page, without reloading it.
    browser_sign_in(page, path=f"/jobs/{job['id']}")
    expect(page.get_by_role("heading", name=f"Job {job['id']}")).to_be_visible()
    page.evaluate("window.loadedOnce = true")
    expect(page.locator("#job-status")).to_have_text("succeeded", timeout=FINISH_TIMEOUT_MS)
    assert page.evaluate("window.loadedOnce") is True, "the page was reloaded"

    # The verdict in words, and the charts drawn.
    label = page.locator("#verdict .verdict-label").text_content()
    assert label in {"Better than the original:", "Worse than the original:", "No clear gain:"}
    expect(page.locator("#verdict li").first).to_contain_text("at batch")
    for chart in ("size", "latency", "speedup", "throughput", "memory"):
        expect(page.locator(f"#chart-{chart} canvas").first).to_be_attached()
    expect(page.locator("#chart-sensitivity-1 canvas").first).to_be_attached()
    keep_screenshot(page, "job")
    assert_accessible(page)

    # The optimized model, byte for byte.
    with dashboard.client() as api:
        artifacts = {a["kind"]: a for a in api.get(f"/v1/jobs/{job['id']}/artifacts").json()}
    with page.expect_download() as download:
        page.get_by_role("link", name="Download the optimized model").click()
    saved = Path(download.value.path())
    assert hashlib.sha256(saved.read_bytes()).hexdigest() == artifacts["model"]["sha256"]

    # The sensitivity report's suggestion opens the composer with the exclusion in the spec.
    page.get_by_role("link", name="Exclude these and run again").click()
    page.wait_for_url("**/jobs/new?spec=*")
    spec = json.loads(parse_qs(urlsplit(page.url).query)["spec"][0])
    assert spec["model_id"] == model["id"]
    assert SENSITIVE_NODE in spec["passes"][0]["exclude"]["nodes"]
    assert spec["passes"][0]["scope"] == "partial"
    # ...and running it from there submits exactly that spec.
    page.get_by_role("button", name="Submit job").first.click()
    page.wait_for_url("**/jobs/job_*")
    with dashboard.client() as api:
        rerun = api.get(f"/v1/jobs/{urlsplit(page.url).path.rsplit('/', 1)[1]}").json()
    assert SENSITIVE_NODE in rerun["spec"]["passes"][0]["exclude"]["nodes"]

    # The list follows the sweep's jobs as they run, without reloading.
    page.goto(f"/jobs?batch_id={sweep['id']}")
    page.evaluate("window.loadedOnce = true")
    for swept in sweep["jobs"]:
        row = page.get_by_role("row").filter(has_text=swept["id"])
        expect(row.locator(".status")).to_have_text("succeeded", timeout=FINISH_TIMEOUT_MS)
    assert page.evaluate("window.loadedOnce") is True, "the list was reloaded"
    expect(page.locator("#job-rows[hx-trigger]")).to_have_count(0)  # nothing left to follow

    # The sweep on one chart, the Pareto-best marked.
    page.goto(f"/compare?batch_id={sweep['id']}")
    expect(page.locator("#chart-compare canvas").first).to_be_attached()
    table = page.locator("#compare-table")
    expect(table.get_by_text("Pareto-best").first).to_be_visible()
    expect(table.locator("tbody tr")).to_have_count(3)
    keep_screenshot(page, "compare")
    assert_accessible(page)
    with page.expect_download() as picked:
        table.get_by_role("link", name="Download model").first.click()
    assert picked.value.suggested_filename == "optimized.onnx"

    # Cancel a job that waits, then retry it.
    with dashboard.client() as api:
        slow = api.post(
            "/v1/jobs",
            json={
                **_quantize(model["id"], dataset["id"]),
                "benchmark": {"batch_sizes": [1], "warmup": 10, "iterations": 100000},
            },
        ).json()
    page.goto(f"/jobs/{slow['id']}")
    page.get_by_role("button", name="Cancel this job").click()
    expect(page.locator("#job-status")).to_have_text("canceled", timeout=FINISH_TIMEOUT_MS)
    page.get_by_role("button", name="Retry this job").click()
    expect(page.get_by_text(f"retries {slow['id']}")).to_be_visible()
    retry_id = page.url.rsplit("/", 1)[1]
    assert retry_id != slow["id"]
    page.get_by_role("button", name="Cancel this job").click()
    expect(page.locator("#job-status")).to_have_text("canceled", timeout=FINISH_TIMEOUT_MS)

    page.goto("/jobs")
    expect(page.get_by_role("link", name=job["id"])).to_be_visible()
    keep_screenshot(page, "jobs")
    assert_accessible(page)

    # Another project's key sees none of it.
    with dashboard.client() as api:
        other = api.post("/v1/projects", json={"name": "another team"}).json()
        key = api.post(
            "/v1/keys", json={"project_id": other["id"], "name": "theirs", "scopes": ["admin"]}
        ).json()["key"]
    context = browser.new_context(base_url=dashboard.base_url)
    try:
        theirs = context.new_page()
        browser_sign_in(theirs, key=key, path=f"/jobs/{job['id']}")
        expect(theirs.get_by_role("heading", name="Not found")).to_be_visible()
        theirs.goto(f"/compare?batch_id={sweep['id']}")
        expect(theirs.get_by_role("heading", name="Not found")).to_be_visible()
    finally:
        context.close()
