"""The admin pages: keys of one's own project for an `admin` key, every project for an
`instance` key; a new key shown once; revocation behind a confirm step and the CSRF token."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from tests.conftest import ADMIN_KEY
from tests.web.conftest import csrf_of, sign_in


def _v1(pages: TestClient, key: str = ADMIN_KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _project_with_key(pages: TestClient, name: str, scopes: list[str]) -> tuple[str, str]:
    project = pages.post("/v1/projects", json={"name": name}, headers=_v1(pages))
    assert project.status_code == 201, project.text
    created = pages.post(
        "/v1/keys",
        json={"project_id": project.json()["id"], "name": f"{name} key", "scopes": scopes},
        headers=_v1(pages),
    )
    assert created.status_code == 201, created.text
    return project.json()["id"], created.json()["key"]


def _key_id(pages: TestClient, name: str) -> str:
    listed = pages.get("/v1/keys", headers=_v1(pages)).json()
    return str(next(k["id"] for k in listed if k["name"] == name))


def _new_key_on(page: str) -> str:
    found = re.search(r'id="new-key-value"[^>]*value="([^"]+)"', page)
    assert found, "the page does not show the new key"
    return found.group(1)


def test_an_admin_manages_only_its_own_projects_keys(pages: TestClient) -> None:
    _, other_key = _project_with_key(pages, "other", ["read"])
    project_id, admin_key = _project_with_key(pages, "team", ["admin"])
    csrf = sign_in(pages, admin_key)

    page = pages.get("/admin")
    assert page.status_code == 200
    assert "Keys of team" in page.text and "team key" in page.text
    assert "other key" not in page.text and "Projects" not in page.text
    assert 'value="instance"' not in page.text  # a scope it may not grant is not offered
    assert pages.get("/admin?project=prj_nope").status_code == 403

    created = pages.post(
        "/admin/keys",
        data={
            "csrf_token": csrf,
            "project_id": project_id,
            "name": "CI pipeline",
            "scopes": ["read", "write"],
            "expires_at": "2099-01-01T00:00",
        },
    )
    assert created.status_code == 201
    assert created.headers["cache-control"] == "no-store"
    plain = _new_key_on(created.text)
    assert "shown only this once" in created.text
    whoami = pages.get("/v1/keys", headers=_v1(pages, plain))
    assert whoami.status_code == 403  # it authenticates, and holds only read and write
    listed = pages.get("/v1/keys", headers=_v1(pages, admin_key)).json()
    ci = next(k for k in listed if k["name"] == "CI pipeline")
    assert ci["scopes"] == ["read", "write"] and ci["expires_at"].startswith("2099-01-01")
    # Shown once: the listing has its prefix only.
    assert plain not in pages.get("/admin").text

    sneaky = pages.post(
        "/admin/keys",
        data={"csrf_token": csrf, "project_id": project_id, "name": "x", "scopes": ["instance"]},
    )
    assert sneaky.status_code == 403
    assert "needs an API key with the &#39;instance&#39; scope" in sneaky.text

    other_id = _key_id(pages, "other key")
    assert pages.get(f"/admin/keys/{other_id}/revoke").status_code == 404
    refused = pages.post(f"/admin/keys/{other_id}/revoke", data={"csrf_token": csrf})
    assert refused.status_code == 404
    assert pages.get("/v1/models", headers=_v1(pages, other_key)).status_code == 200


def test_bad_key_forms_say_what_to_fix_and_keep_what_was_typed(pages: TestClient) -> None:
    project_id, admin_key = _project_with_key(pages, "team", ["admin"])
    csrf = sign_in(pages, admin_key)
    base = {"csrf_token": csrf, "project_id": project_id, "name": "nightly"}

    no_scope = pages.post("/admin/keys", data=base)
    assert no_scope.status_code == 422 and "choose at least one scope" in no_scope.text
    assert 'value="nightly"' in no_scope.text
    past = pages.post(
        "/admin/keys", data={**base, "scopes": ["read"], "expires_at": "2001-01-01T00:00"}
    )
    assert past.status_code == 422 and "the expiry is in the past" in past.text
    nameless = pages.post("/admin/keys", data={**base, "name": " ", "scopes": ["read"]})
    assert nameless.status_code == 422 and "give the key a name" in nameless.text
    assert "nightly" not in [k["name"] for k in pages.get("/v1/keys", headers=_v1(pages)).json()]


def test_revoking_a_key_asks_first_needs_the_token_and_ends_its_use(pages: TestClient) -> None:
    project_id, admin_key = _project_with_key(pages, "team", ["admin"])
    csrf = sign_in(pages, admin_key)
    plain = _new_key_on(
        pages.post(
            "/admin/keys",
            data={"csrf_token": csrf, "project_id": project_id, "name": "old", "scopes": ["read"]},
        ).text
    )
    key_id = _key_id(pages, "old")

    confirm = pages.get(f"/admin/keys/{key_id}/revoke")
    assert confirm.status_code == 200 and "Revoke key “old”?" in confirm.text
    assert pages.get("/v1/models", headers=_v1(pages, plain)).status_code == 200

    forged = pages.post(f"/admin/keys/{key_id}/revoke", data={})
    assert forged.status_code == 403
    assert pages.get("/v1/models", headers=_v1(pages, plain)).status_code == 200

    done = pages.post(
        f"/admin/keys/{key_id}/revoke",
        data={"csrf_token": csrf_of(confirm.text)},
        follow_redirects=False,
    )
    assert done.status_code == 303
    assert pages.get("/v1/models", headers=_v1(pages, plain)).status_code == 401
    page = pages.get(done.headers["location"])
    assert "The key is revoked" in page.text and "revoked</span>" in page.text


def test_revoking_the_key_one_is_signed_in_with_signs_out(pages: TestClient) -> None:
    _, admin_key = _project_with_key(pages, "team", ["admin"])
    csrf = sign_in(pages, admin_key)
    own_id = _key_id(pages, "team key")
    confirm = pages.get(f"/admin/keys/{own_id}/revoke")
    assert "revoking it signs you out" in confirm.text
    done = pages.post(f"/admin/keys/{own_id}/revoke", data={"csrf_token": csrf})
    assert "You are signed out." in done.text
    again = pages.get("/admin", follow_redirects=False)
    assert again.status_code == 303 and again.headers["location"].startswith("/signin")


def test_a_key_without_admin_sees_no_admin_pages(pages: TestClient) -> None:
    _, writer = _project_with_key(pages, "team", ["read", "write"])
    csrf = sign_in(pages, writer)
    assert 'href="/admin"' not in pages.get("/jobs").text
    for path in ("/admin", "/admin/workers"):
        page = pages.get(path)
        assert page.status_code == 403 and "lacks the &#39;admin&#39; scope" in page.text
    refused = pages.post("/admin/projects", data={"csrf_token": csrf, "name": "mine"})
    assert refused.status_code == 403


def test_an_instance_key_creates_and_revokes_projects(pages: TestClient) -> None:
    csrf = sign_in(pages, ADMIN_KEY)
    page = pages.get("/admin")
    assert "Projects" in page.text and 'value="instance"' in page.text

    bad_name = pages.post("/admin/projects", data={"csrf_token": csrf, "name": "$bad"})
    assert bad_name.status_code == 422 and "project name" in bad_name.text

    made = pages.post("/admin/projects", data={"csrf_token": csrf, "name": "vision"})
    assert "The project is created" in made.text and "Keys of vision" in made.text
    project_id = re.search(r'name="project_id" value="([^"]+)"', made.text)
    assert project_id
    key_page = pages.post(
        "/admin/keys",
        data={
            "csrf_token": csrf,
            "project_id": project_id.group(1),
            "name": "vision admin",
            "scopes": ["admin"],
        },
    )
    plain = _new_key_on(key_page.text)
    assert pages.get("/v1/models", headers=_v1(pages, plain)).status_code == 200

    own_id = pages.get("/v1/keys", headers=_v1(pages)).json()[0]["project_id"]
    assert pages.get(f"/admin/projects/{own_id}/revoke").status_code == 409

    confirm = pages.get(f"/admin/projects/{project_id.group(1)}/revoke")
    assert confirm.status_code == 200 and "1 active key stops working" in confirm.text
    pages.post(f"/admin/projects/{project_id.group(1)}/revoke", data={"csrf_token": csrf})
    assert pages.get("/v1/models", headers=_v1(pages, plain)).status_code == 401
