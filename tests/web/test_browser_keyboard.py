"""The main flow with the keyboard alone, in a real browser against a real API and worker:
sign in, upload a model, compose a job for it, watch it finish, reach its download, and
find it in the list. Nothing is clicked or filled in; the only navigation not made by a key
is the first page load. The focus is visible on the way, and stays put through the live
updates of the job's page."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from playwright.sync_api import Page, expect

from tests.conftest import ADMIN_KEY
from tests.integration.processes import Service, wait_until
from tests.models.onnx_basic import make_mlp
from tests.web.keyboard import assert_focus_visible, focused_name, tab_to

#: A worker needs a while for its first job (it loads torch); the page must wait as long.
FINISH_TIMEOUT_MS = 180_000
ACTIVE = ("queued", "running", "canceling")

#: Counts the page's live updates (htmx swaps) in an attribute a locator can wait for.
_COUNT_SWAPS = """() => {
  document.addEventListener("htmx:afterSettle", () => {
    document.body.dataset.swaps = String(Number(document.body.dataset.swaps || 0) + 1);
  });
}"""


def test_the_main_flow_with_the_keyboard_alone(
    page: Page, dashboard: Service, tmp_path: Path
) -> None:
    try:
        with dashboard.client() as api, _worker_kept_busy(api, tmp_path) as release:
            _walk(page, tmp_path, release)
    except BaseException:
        print(dashboard.dump_logs())
        raise


@contextmanager
def _worker_kept_busy(api: httpx.Client, tmp_path: Path) -> Iterator[Callable[[], None]]:
    """A job whose benchmark runs for minutes holds the worker, so the job made by keyboard
    waits (and its page keeps updating) until `release()` cancels it."""
    wide = make_mlp(tmp_path / "wide.onnx", in_features=256, hidden=1024, classes=10)
    with wide.open("rb") as handle:
        model = api.post("/v1/models", files={"file": (wide.name, handle)}).json()
    spec = {
        "model_id": model["id"],
        "passes": [{"kind": "quantize", "method": "dynamic"}],
        "benchmark": {"batch_sizes": [64], "warmup": 0, "iterations": 100_000},
    }
    blocker = api.post("/v1/jobs", json=spec).json()["id"]

    def status() -> str:
        return str(api.get(f"/v1/jobs/{blocker}").json()["status"])

    def release() -> None:
        api.post(f"/v1/jobs/{blocker}/cancel")
        wait_until(lambda: status() not in ACTIVE, 120, "the blocking job to stop")

    try:
        wait_until(lambda: status() == "running", 120, "the blocking job to run")
        yield release
    finally:
        release()


def _walk(page: Page, tmp_path: Path, release: Callable[[], None]) -> None:
    model_path = make_mlp(tmp_path / "keyboard-mlp.onnx", in_features=16, classes=4, opset=17)

    # Sign in.
    # Playwright switches the browser to handing file choosers to the test when a listener
    # is added, without waiting for the switch; added this early, it is on long before the
    # key press that opens one (else, on a busy machine, the press can win the race).
    page.on("filechooser", lambda _chooser: None)
    page.goto("/jobs")
    tab_to(page, "API key")
    assert_focus_visible(page)
    page.keyboard.type(ADMIN_KEY)
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Jobs", exact=True)).to_be_visible()

    # Models, from the menu; upload one through the file chooser the keyboard opens.
    tab_to(page, "Models")
    assert_focus_visible(page)
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Models", exact=True)).to_be_visible()
    tab_to(page, "Model file")
    assert_focus_visible(page)
    with page.expect_file_chooser() as chooser:
        page.keyboard.press("Space")
    chooser.value.set_files(model_path)
    tab_to(page, "Upload")
    assert_focus_visible(page)
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"/models/mdl_\w+$"))
    expect(page.get_by_role("heading", name="keyboard-mlp.onnx")).to_be_visible()

    # A job for it, from the model's page.
    tab_to(page, "New job for this model")
    assert_focus_visible(page)
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="New job")).to_be_visible()
    tab_to(page, "Pass (required)")
    assert_focus_visible(page)
    pass_kind = page.get_by_label("Pass (required)", exact=True)
    # Arrow keys walk the list without reloading the page under them (which would drop the
    # presses that come while it loads); Enter then shows the chosen pass's options.
    loads: list[str] = []
    page.on("load", lambda loaded: loads.append(loaded.url))
    for _ in range(3):  # quantize: dynamic -> static -> fp16 -> int8 weight only
        page.keyboard.press("ArrowDown")
    expect(pass_kind).to_have_value("quantize/int8_weight_only")
    expect(page.get_by_role("button", name="Show this pass's options")).to_be_visible()
    assert loads == [], "the page reloaded while the arrow keys moved through the list"
    page.keyboard.press("Enter")
    expect(page.get_by_label("Per channel")).to_be_visible()
    expect(pass_kind).to_be_focused()
    expect(pass_kind).to_have_value("quantize/int8_weight_only")
    tab_to(page, "Per channel")
    page.keyboard.press("ArrowDown")
    expect(page.get_by_label("Per channel")).to_have_value("true")
    tab_to(page, "Iterations")
    page.keyboard.type("5")
    tab_to(page, "Warmup")
    page.keyboard.type("1")
    page.keyboard.press("Enter")  # Enter in a text field submits the form: "Submit job"
    expect(page).to_have_url(re.compile(r"/jobs/job_\w+$"))
    job_id = page.url.rsplit("/", 1)[-1]
    expect(page.get_by_role("heading", name=f"Job {job_id}")).to_be_visible()

    # It waits for the busy worker, its page updating itself every few seconds; the focus
    # stays on the link a keyboard user is on, though the link has no id for htmx to find.
    expect(page.locator("#job-status")).to_have_text("queued")
    page.evaluate(_COUNT_SWAPS)
    tab_to(page, "keyboard-mlp.onnx")
    expect(page.locator("body[data-swaps]")).to_be_attached(timeout=10_000)
    assert focused_name(page) == "keyboard-mlp.onnx", "the live update lost the focus"
    assert_focus_visible(page)
    # On its Cancel button as it finishes, the focus goes where the button was: to the
    # download of the optimized model, not back to the top of the page.
    tab_to(page, "Cancel this job")
    release()
    expect(page.locator("#job-status")).to_have_text("succeeded", timeout=FINISH_TIMEOUT_MS)
    download = page.get_by_role("link", name=re.compile("^Download the optimized model"))
    expect(download).to_be_focused()
    assert_focus_visible(page)
    # And it is in the Tab order like any link.
    page.keyboard.press("Shift+Tab")
    expect(download).not_to_be_focused()
    page.keyboard.press("Tab")
    expect(download).to_be_focused()

    # Back to the list by the menu: the job is there, succeeded, and its link takes the focus.
    tab_to(page, "Jobs", backwards=True)
    assert_focus_visible(page)
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Jobs", exact=True)).to_be_visible()
    tab_to(page, job_id)
    assert_focus_visible(page)
    row = page.get_by_role("row").filter(has_text=job_id)
    expect(row.locator(".status")).to_have_text("succeeded")
