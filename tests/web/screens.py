"""Screenshots of the dashboard for docs/screenshots/, taken by the browser tests themselves
so that they always show the pages as they are: `make screenshots` runs the browser tests
with MODELPRESS_SCREENSHOTS=1."""

from __future__ import annotations

import os
from pathlib import Path

from playwright.sync_api import Page

SCREENSHOTS_DIR = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
#: One window size for every screenshot: the top of a page on a laptop, a small file.
SCREENSHOT_VIEWPORT = {"width": 1280, "height": 800}


def keep_screenshot(page: Page, name: str) -> None:
    """Saves what a 1280x800 window shows of the page as docs/screenshots/NAME.png when
    screenshots were asked for."""
    if os.environ.get("MODELPRESS_SCREENSHOTS") != "1":
        return
    SCREENSHOTS_DIR.mkdir(parents=True, exist_ok=True)
    size = page.viewport_size
    page.set_viewport_size(SCREENSHOT_VIEWPORT)
    try:
        page.screenshot(path=SCREENSHOTS_DIR / f"{name}.png")
    finally:
        if size is not None:
            page.set_viewport_size(size)
