"""Signing in to the dashboard: the session cookie, CSRF, sign-out and expiry."""

from __future__ import annotations

from datetime import timedelta

import time_machine
from fastapi.testclient import TestClient

from core.db import utcnow
from tests.conftest import ADMIN_KEY
from tests.web.conftest import csrf_of, sign_in


def test_pages_ask_to_sign_in_first(pages: TestClient) -> None:
    response = pages.get("/jobs?status=failed", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/signin?next=%2Fjobs%3Fstatus%3Dfailed"
    fragment = pages.get("/jobs", headers={"HX-Request": "true"}, follow_redirects=False)
    assert fragment.status_code == 401
    assert fragment.headers["hx-redirect"].startswith("/signin?next=")


def test_sign_in_sets_a_session_cookie_that_is_not_the_key(pages: TestClient) -> None:
    form = pages.get("/signin")
    response = pages.post(
        "/signin",
        data={"api_key": ADMIN_KEY, "csrf_token": csrf_of(form.text), "next": "/jobs"},
        follow_redirects=False,
    )
    assert response.status_code == 303 and response.headers["location"] == "/jobs"
    cookie = next(
        v for k, v in response.headers.multi_items() if k == "set-cookie" and "mp_session" in v
    )
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie  # plain http here: a Secure cookie would never come back
    assert ADMIN_KEY not in cookie
    page = pages.get("/jobs")
    assert page.status_code == 200 and "<h1>Jobs</h1>" in page.text


def test_the_cookie_is_secure_over_https(service_env: dict[str, str]) -> None:
    from api.main import create_app

    with TestClient(create_app(), base_url="https://dashboard.example") as https:
        form = https.get("/signin")
        response = https.post(
            "/signin",
            data={"api_key": ADMIN_KEY, "csrf_token": csrf_of(form.text)},
            follow_redirects=False,
        )
    cookie = next(
        v for k, v in response.headers.multi_items() if k == "set-cookie" and "mp_session" in v
    )
    assert "Secure" in cookie


def test_a_wrong_key_is_refused_with_the_reason(pages: TestClient) -> None:
    form = pages.get("/signin")
    response = pages.post(
        "/signin",
        data={"api_key": "mpk_not_a_key", "csrf_token": csrf_of(form.text)},
        follow_redirects=False,
    )
    assert response.status_code == 401
    assert "Sign-in failed" in response.text
    assert pages.get("/jobs", follow_redirects=False).status_code == 303


def test_sign_in_without_its_csrf_token_is_refused(pages: TestClient) -> None:
    pages.get("/signin")
    response = pages.post(
        "/signin", data={"api_key": ADMIN_KEY, "csrf_token": "forged"}, follow_redirects=False
    )
    assert response.status_code == 403
    assert pages.get("/jobs", follow_redirects=False).status_code == 303


def test_sign_out_needs_the_token_and_ends_the_session(pages: TestClient) -> None:
    token = sign_in(pages)
    refused = pages.post("/signout", data={}, follow_redirects=False)
    assert refused.status_code == 403 and "security token" in refused.text
    assert pages.get("/jobs").status_code == 200  # still signed in

    other_site = pages.post(
        "/signout",
        data={"csrf_token": token},
        headers={"Origin": "https://evil.example"},
        follow_redirects=False,
    )
    assert other_site.status_code == 403

    out = pages.post("/signout", data={"csrf_token": token}, follow_redirects=False)
    assert out.status_code == 303 and out.headers["location"] == "/signin?signed_out=1"
    assert pages.get("/jobs", follow_redirects=False).status_code == 303


def test_a_stolen_cookie_is_worthless_after_sign_out(pages: TestClient) -> None:
    token = sign_in(pages)
    stolen = pages.cookies.get("mp_session")
    pages.post("/signout", data={"csrf_token": token}, follow_redirects=False)
    pages.cookies.set("mp_session", stolen)
    assert pages.get("/jobs", follow_redirects=False).status_code == 303


def test_an_idle_session_expires(pages: TestClient) -> None:
    sign_in(pages)
    with time_machine.travel(utcnow() + timedelta(minutes=29)):
        assert pages.get("/jobs", follow_redirects=False).status_code == 200
    # The visit at 29 minutes restarted the idle clock: 31 minutes later it has run out.
    with time_machine.travel(utcnow() + timedelta(minutes=29 + 31)):
        assert pages.get("/jobs", follow_redirects=False).status_code == 303


def test_revoking_the_key_ends_its_sessions(pages: TestClient) -> None:
    from api.main import create_app

    with TestClient(create_app()) as api:
        api.headers["Authorization"] = f"Bearer {ADMIN_KEY}"
        project_id = api.get("/v1/projects").json()[0]["id"]
        created = api.post(
            "/v1/keys", json={"name": "laptop", "scopes": ["read"], "project_id": project_id}
        )
        assert created.status_code == 201, created.text
        sign_in(pages, created.json()["key"])
        assert pages.get("/jobs", follow_redirects=False).status_code == 200
        assert api.delete(f"/v1/keys/{created.json()['id']}").status_code == 200
    assert pages.get("/jobs", follow_redirects=False).status_code == 303


def test_pages_carry_a_strict_content_security_policy(pages: TestClient) -> None:
    response = pages.get("/signin")
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert "<script>" not in response.text  # no inline script: the policy would block it
    assert pages.get("/static/vendor/htmx.min.js").status_code == 200
    assert pages.get("/static/vendor/echarts.min.js").status_code == 200
