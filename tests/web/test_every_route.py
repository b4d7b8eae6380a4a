"""Rules every dashboard route keeps, checked on the routes themselves so that a new page
cannot forget them: it needs a session, and if it changes anything, the CSRF token."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from tests.api.test_isolation import app_routes
from web.auth import csrf_checked, signed_in

#: The only dashboard routes a browser without a session may reach.
PUBLIC = {("GET", "/signin"), ("POST", "/signin"), ("GET", "/")}
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


def _dependencies(route: Any) -> set[object]:
    found: set[object] = set()
    pending = list(getattr(route, "original_route", route).dependant.dependencies)
    while pending:
        dependant = pending.pop()
        found.add(dependant.call)
        pending.extend(dependant.dependencies)
    return found


def _dashboard_routes(app: object) -> list[tuple[str, Any]]:
    return [
        (method, route) for route in app_routes(app, dashboard=True) for method in route.methods
    ]


def test_every_page_needs_a_session_and_every_change_its_csrf_token(
    pages: TestClient,
) -> None:
    routes = _dashboard_routes(pages.app)
    assert len(routes) >= 4
    for method, route in routes:
        if (method, route.path) in PUBLIC:
            continue
        calls = _dependencies(route)
        assert signed_in in calls, f"{method} {route.path} does not need a session"
        if method not in SAFE_METHODS:
            assert csrf_checked in calls, f"{method} {route.path} does not check the CSRF token"
