"""An auto search's page in a real browser: its trials chart is drawn, and the page passes
axe-core and fits a phone's width. The search's result is written into the database as the
search writes it (the trials themselves are not run here)."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from playwright.sync_api import Page, expect

from tests.integration.processes import Service
from tests.models.onnx_basic import make_dataset, make_mlp
from tests.web.screens import keep_screenshot
from tests.web.test_browser_accessibility import _upload
from tests.web.test_browser_jobs import assert_accessible
from tests.web.test_browser_signin import browser_sign_in
from tests.web.test_search_page import GOOD_MESSAGE, search_result


def test_a_search_page_draws_its_trials_and_passes_axe(
    page: Page, dashboard: Service, tmp_path: Path
) -> None:
    model_path = make_mlp(tmp_path / "mlp.onnx")
    with dashboard.client() as client:
        model = _upload(client, "/v1/models", model_path)
        dataset = _upload(client, "/v1/datasets", make_dataset(tmp_path / "d.npz", model_path))
        spec = {
            "model_id": model["id"],
            "passes": [{"kind": "auto", "dataset_id": dataset["id"], "metric": "fidelity"}],
        }
        job_id = client.post("/v1/jobs", json=spec).json()["id"]
        # Stopped at once, so no worker time goes to it; its result is then written below.
        client.post(f"/v1/jobs/{job_id}/cancel")
        deadline = time.monotonic() + 60
        while client.get(f"/v1/jobs/{job_id}").json()["status"] not in ("failed", "canceled"):
            assert time.monotonic() < deadline, "the search did not stop"
            time.sleep(0.2)
    result = search_result(stopped="finished", best="int8-static-tr@1", fallback=None)
    with sqlite3.connect(Path(dashboard.env["MODELPRESS_DATA_DIR"]) / "modelpress.db") as db:
        db.execute(
            "UPDATE jobs SET status = 'succeeded', result = ?, error_type = NULL, "
            "error_message = NULL WHERE id = ?",
            (json.dumps(result), job_id),
        )

    browser_sign_in(page, path=f"/jobs/{job_id}")
    expect(page.get_by_role("heading", name="Auto search")).to_be_visible()
    expect(page.locator("#search-answer")).to_contain_text(GOOD_MESSAGE)
    expect(page.locator("#chart-search")).to_have_attribute("data-drawn", "true")
    trial = page.get_by_role("link", name="int8-static-tr@1")
    expect(trial).to_have_attribute("href", "/jobs/job_trial_int8_static_tr_1")
    # Each trial's reasons are read as sentences, not one word a line down a tall row.
    reasons = page.locator("#trials-table td.why")
    expect(reasons.first).to_be_visible()
    widths = [box["width"] for box in (r.bounding_box() for r in reasons.all()) if box]
    assert min(widths) >= 300, widths
    rows = [r.bounding_box() for r in page.locator("#trials-table tbody tr").all()]
    assert max(box["height"] for box in rows if box) < 250, rows
    keep_screenshot(page, "auto-search")
    assert_accessible(page)
