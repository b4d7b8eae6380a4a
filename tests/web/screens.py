"""Screenshots of the dashboard for docs/screenshots/, taken by the browser tests themselves
so that they always show the pages as they are: `make screenshots` runs the browser tests
with MODELPRESS_SCREENSHOTS=1."""

from __future__ import annotations

import os
from pathlib import Path

from playwright.sync_api import Page

SCREENSHOTS_DIR = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


def keep_screenshot(page: Page, name: str) -> None:
    """Saves the page as docs/screenshots/NAME.png when screenshots were asked for."""
    if os.environ.get("MODELPRESS_SCREENSHOTS") != "1":
        return
    SCREENSHOTS_DIR.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SCREENSHOTS_DIR / f"{name}.png", full_page=True)
