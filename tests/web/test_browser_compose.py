"""Upload a model and compose a job in a real browser (Debian's chromium, driven by
Playwright), with axe-core checking each page on the way."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Page, expect

from tests.integration.processes import Service
from tests.models.onnx_basic import make_dataset, make_mlp
from tests.web.screens import keep_screenshot
from tests.web.test_browser_signin import browser_sign_in

#: Records what the upload's <progress> and status said, in sessionStorage, which outlives
#: the navigation to the model's page that follows a finished upload.
_WATCH_PROGRESS = """() => {
  const bar = document.querySelector("#upload-progress");
  const status = document.querySelector("#upload-status");
  sessionStorage.setItem("progress", "[]");
  sessionStorage.setItem("statuses", "[]");
  const keep = (name, value) => {
    const seen = JSON.parse(sessionStorage.getItem(name));
    seen.push(value);
    sessionStorage.setItem(name, JSON.stringify(seen));
  };
  new MutationObserver(() => keep("progress", bar.value)).observe(bar, {attributes: true});
  new MutationObserver(() => keep("statuses", status.textContent))
    .observe(status, {childList: true, characterData: true, subtree: true});
}"""


def _serious_violations(page: Page) -> list[dict[str, Any]]:
    results = Axe().run(page)
    return [
        {"id": v["id"], "nodes": [n["target"] for n in v["nodes"]]}
        for v in results.response["violations"]
        if v["impact"] in ("serious", "critical")
    ]


def test_upload_a_model_then_compose_and_submit_a_job(
    page: Page, dashboard: Service, tmp_path: Path
) -> None:
    browser_sign_in(page, path="/models")
    expect(page.get_by_role("heading", name="Models", exact=True)).to_be_visible()
    assert _serious_violations(page) == []

    model_path = make_mlp(tmp_path / "tiny-mlp.onnx", in_features=16, classes=4, opset=17)
    data_path = make_dataset(tmp_path / "tiny.npz", model_path, samples=16)
    page.get_by_label("Model file").set_input_files(model_path)
    page.evaluate(_WATCH_PROGRESS)
    page.get_by_role("button", name="Upload").click()
    expect(page).to_have_url(re.compile(r"/models/mdl_\w+$"))
    model_url = page.url
    progress = json.loads(page.evaluate("sessionStorage.getItem('progress')"))
    statuses = json.loads(page.evaluate("sessionStorage.getItem('statuses')"))
    assert progress and progress[-1] == 100
    assert any("Uploaded 100% of tiny-mlp.onnx" in s for s in statuses)

    # The model's page: its inputs with the dynamic batch dimension, opset, size.
    expect(page.get_by_role("heading", name="tiny-mlp.onnx")).to_be_visible()
    inputs = page.get_by_role("table", name="Inputs")
    expect(inputs.get_by_role("row", name=re.compile(r"x \[N, 16\] float32"))).to_be_visible()
    expect(page.locator("dl.facts")).to_contain_text("Opset17")
    size = model_path.stat().st_size
    expect(page.locator("dl.facts")).to_contain_text(f"{size:,} bytes")
    keep_screenshot(page, "model")
    assert _serious_violations(page) == []
    page.goto("/models")
    keep_screenshot(page, "models")
    with dashboard.client() as api, data_path.open("rb") as handle:
        stored = api.post("/v1/datasets", files={"file": ("tiny.npz", handle)})
    assert stored.status_code == 201, stored.text
    page.goto("/datasets")
    page.get_by_role("link", name="tiny.npz").click()
    expect(page.get_by_role("heading", name="tiny.npz")).to_be_visible()
    assert _serious_violations(page) == []
    page.goto(model_url)

    # Compose a quantization job for it: the form comes with the model chosen.
    page.get_by_role("link", name="New job for this model").click()
    expect(page.get_by_role("heading", name="New job")).to_be_visible()
    pass_kind = page.get_by_label("Pass (required)", exact=True)
    pass_kind.select_option("quantize/int8_weight_only")
    # Choosing another kind shows its options (the page comes back with them).
    expect(page.get_by_label("Per channel")).to_be_visible()
    page.get_by_label("Per channel").select_option("true")
    page.get_by_label("Iterations").fill("5")
    page.get_by_label("Warmup").fill("1")
    keep_screenshot(page, "compose")
    assert _serious_violations(page) == []
    page.get_by_role("button", name="Submit job").first.click()
    expect(page).to_have_url(re.compile(r"/jobs/job_\w+$"))

    job_id = page.url.rsplit("/", 1)[-1]
    with dashboard.client() as api:
        job = api.get(f"/v1/jobs/{job_id}").json()
    assert job["spec"]["passes"][0]["method"] == "int8_weight_only"
    assert job["spec"]["passes"][0]["per_channel"] is True
    assert job["spec"]["benchmark"]["iterations"] == 5


def test_the_json_editor_shows_the_apis_message_next_to_the_field(
    page: Page, dashboard: Service
) -> None:
    browser_sign_in(page, path="/jobs/new")
    expect(page.get_by_role("heading", name="New job")).to_be_visible()
    page.get_by_text("Paste or edit the spec as JSON").click()
    spec = {
        "model_id": "mdl_missing",
        "passes": [{"kind": "quantize", "method": "fp16"}],
        "benchmark": {"batch_sizes": [1], "iterations": 0},
    }
    page.get_by_label("Job spec (JSON)").fill(json.dumps(spec))
    page.get_by_role("button", name="Submit the JSON").click()

    iterations = page.get_by_label("Iterations")
    expect(iterations).to_have_attribute("aria-invalid", "true")
    expect(iterations).to_have_accessible_description(re.compile("greater than or equal to 1"))
    expect(page.get_by_role("alert").first).to_contain_text("The job was not submitted")
    # What was typed is still there, in the editor and in the form.
    expect(page.get_by_label("Job spec (JSON)")).to_have_value(json.dumps(spec))
    expect(iterations).to_have_value("0")
    assert _serious_violations(page) == []
    page.set_viewport_size({"width": 390, "height": 844})
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
