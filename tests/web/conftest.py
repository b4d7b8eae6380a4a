"""Dashboard fixtures: a browser-less client for the pages (fast), and for the browser tests a
real API server and worker with Debian's chromium driven by Playwright."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import ADMIN_KEY
from tests.integration.processes import Service, run_service

#: Flags for a browser on a machine with no network but loopback: without the background
#: networking ones, chromium keeps trying to reach Google's hosts.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def pages(service_env: dict[str, str]) -> Iterator[TestClient]:
    """The app with no key in its headers: what a browser without a session gets."""
    from api.main import create_app

    with TestClient(create_app(), base_url="http://testserver") as test_client:
        yield test_client


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, "the page has no form with a CSRF token"
    return found.group(1)


def sign_in(pages: TestClient, key: str = ADMIN_KEY) -> str:
    """Signs `pages` in with `key`; returns the session's CSRF token."""
    form = pages.get("/signin")
    response = pages.post(
        "/signin",
        data={"api_key": key, "csrf_token": csrf_of(form.text), "next": "/jobs"},
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text
    page = pages.get("/jobs")
    assert page.status_code == 200
    found = re.search(r'<meta name="csrf-token" content="([^"]+)"', page.text)
    assert found
    return found.group(1)


@pytest.fixture(scope="session")
def chromium_path() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("Debian's chromium is not installed (`make system-packages` installs it)")
    return path


@pytest.fixture(scope="session")
def browser_type_launch_args(
    browser_type_launch_args: dict[str, Any], chromium_path: str
) -> dict[str, Any]:
    """pytest-playwright's browser, started from Debian's chromium (nothing is downloaded)."""
    return {**browser_type_launch_args, "executable_path": chromium_path, "args": CHROMIUM_ARGS}


@pytest.fixture(scope="session")
def dashboard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """One API server and one worker for all browser tests (the worker preloads torch)."""
    yield from run_service(tmp_path_factory.mktemp("dashboard"), None)


@pytest.fixture(scope="session")
def browser_context_args(
    browser_context_args: dict[str, Any], dashboard: Service
) -> dict[str, Any]:
    return {**browser_context_args, "base_url": dashboard.base_url}
