"""Signing in and out in a real browser (Debian's chromium, driven by Playwright)."""

from __future__ import annotations

from playwright.sync_api import Page, expect

from tests.conftest import ADMIN_KEY
from tests.web.screens import keep_screenshot


def browser_sign_in(page: Page, key: str = ADMIN_KEY, path: str = "/jobs") -> None:
    page.goto(path)
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    keep_screenshot(page, "signin")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()


def test_sign_in_lands_where_the_user_was_going_and_sign_out_ends_it(page: Page) -> None:
    browser_sign_in(page, path="/jobs")
    expect(page.get_by_role("heading", name="Jobs", exact=True)).to_be_visible()
    cookies = {c["name"]: c for c in page.context.cookies()}
    assert cookies["mp_session"]["httpOnly"] and cookies["mp_session"]["sameSite"] == "Strict"
    assert ADMIN_KEY not in cookies["mp_session"]["value"]

    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_text("You are signed out.")).to_be_visible()
    page.goto("/jobs")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()


def test_a_wrong_key_says_why(page: Page) -> None:
    browser_sign_in(page, key="mpk_wrong")
    expect(page.get_by_role("alert")).to_contain_text("the API key is unknown")
