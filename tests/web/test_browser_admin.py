"""The admin pages in a real browser, driven by the keyboard alone: sign in, reach the admin
page from the menu, create a key, see it once, revoke it; and the workers panel."""

from __future__ import annotations

import re
from pathlib import Path

from playwright.sync_api import Page, expect

from tests.conftest import ADMIN_KEY
from tests.integration.processes import Service, wait_until
from tests.models.onnx_basic import make_mlp
from tests.web.keyboard import tab_to
from tests.web.screens import keep_screenshot
from tests.web.test_browser_accessibility import serious_violations
from tests.web.test_browser_signin import browser_sign_in


def test_keyboard_alone_signs_in_creates_and_revokes_a_key(page: Page) -> None:
    page.goto("/jobs")
    tab_to(page, "API key")
    page.keyboard.type(ADMIN_KEY)
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Jobs", exact=True)).to_be_visible()

    tab_to(page, "Admin")
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Admin", exact=True)).to_be_visible()
    tab_to(page, "Name")
    page.keyboard.type("nightly export")
    tab_to(page, "Create key")
    page.keyboard.press("Enter")

    expect(page.get_by_role("heading", name="The new key")).to_be_visible()
    new_key = page.get_by_label("API key", exact=True).input_value()
    assert new_key.startswith("mpk_") and new_key != ADMIN_KEY
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    tab_to(page, "Copy key")
    page.keyboard.press("Enter")
    expect(page.locator("#new-key-copied")).to_have_text("Copied to the clipboard.")
    assert page.evaluate("navigator.clipboard.readText()") == new_key
    assert not serious_violations(page)  # the page as it shows a new key, which no GET does
    keep_screenshot(page, "admin")
    row = page.get_by_role("row", name="nightly export")
    expect(row).to_contain_text("active")
    expect(row).to_contain_text("read, write")

    tab_to(page, "Revoke key nightly export")
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Revoke key “nightly export”?")).to_be_visible()
    tab_to(page, "Revoke key")
    page.keyboard.press("Enter")
    expect(page.get_by_role("status")).to_contain_text("The key is revoked")
    expect(page.get_by_role("row", name="nightly export")).to_contain_text("revoked")


def test_the_workers_panel_shows_the_worker_running_a_job(
    page: Page, dashboard: Service, tmp_path: Path
) -> None:
    # Wide enough that its benchmark runs for minutes: the job is still running when the
    # panel is read, and is canceled afterwards.
    model_path = make_mlp(tmp_path / "mlp.onnx", in_features=256, hidden=1024, classes=10)
    with dashboard.client() as client, model_path.open("rb") as handle:
        model = client.post("/v1/models", files={"file": (model_path.name, handle)}).json()
        slow = {
            "model_id": model["id"],
            "passes": [{"kind": "quantize", "method": "dynamic"}],
            "benchmark": {"batch_sizes": [64], "warmup": 0, "iterations": 100_000},
        }
        job_id = client.post("/v1/jobs", json=slow).json()["id"]
        try:
            wait_until(
                lambda: client.get(f"/v1/jobs/{job_id}").json()["status"] == "running",
                120,
                "the job to run",
            )
            browser_sign_in(page, path="/admin/workers")
            queues = page.get_by_role("table", name="Whether a live worker serves each queue")
            expect(queues.get_by_role("row", name="cpu")).to_contain_text("yes")
            # "none seen" while the panel knows only busy workers, "no live worker" once
            # workers report themselves.
            expect(queues.get_by_role("row", name="gpu")).to_contain_text(
                re.compile("none seen|no live worker")
            )
            running = page.get_by_role("table", name="Live workers and what each runs")
            expect(running.get_by_role("link", name=job_id)).to_be_visible()
            keep_screenshot(page, "workers")
        finally:
            client.post(f"/v1/jobs/{job_id}/cancel")
            wait_until(
                lambda: (
                    client.get(f"/v1/jobs/{job_id}").json()["status"]
                    in ("canceled", "succeeded", "failed")
                ),
                120,
                "the job to stop",
            )
