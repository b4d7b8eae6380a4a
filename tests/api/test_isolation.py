"""Project isolation on every route: another project's key gets 404 for any of this project's
resources. The routes are read from the app, so a route added later is checked too."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from api.deps import require_admin, require_instance, require_read, require_write
from tests.api.helpers import store_report, upload_dataset, upload_model
from tests.models.onnx_basic import make_dataset, make_mlp

#: Routes anyone may call: liveness and readiness carry no project data.
PUBLIC_PATHS = {"/healthz", "/readyz"}
METHOD_ORDER = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]


def _dependency_calls(route: Any) -> set[Any]:
    calls: set[Any] = set()
    pending = list(route.dependant.dependencies)
    while pending:
        dependant = pending.pop()
        calls.add(dependant.call)
        pending.extend(dependant.dependencies)
    return calls


def app_routes(app: Any, *, dashboard: bool = False) -> list[Any]:
    """Every API route of the app with its full path, included routers' routes too; with
    `dashboard`, the dashboard's routes (left out of the OpenAPI document) instead."""
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # FastAPI before included routers were kept nested
        routes = [r for r in app.routes if isinstance(r, APIRoute)]
    else:
        routes = [
            c for c in iter_route_contexts(app.routes) if isinstance(c.original_route, APIRoute)
        ]
    in_schema = [r for r in routes if getattr(r, "original_route", r).include_in_schema]
    if dashboard:
        return [r for r in routes if r not in in_schema]
    routes = in_schema
    # Checked against the OpenAPI document, so no change in how FastAPI nests routers can
    # hide a route from these tests.
    walked = {(r.path, method) for r in routes for method in r.methods}
    documented = {
        (path, method.upper()) for path, ops in app.openapi()["paths"].items() for method in ops
    }
    assert documented <= walked, f"routes not walked: {sorted(documented - walked)}"
    return routes


def _is_admin(route: Any) -> bool:
    return bool({require_admin, require_instance} & _dependency_calls(route))


def _methods(route: Any) -> list[str]:
    return sorted(route.methods, key=METHOD_ORDER.index)


def _url(route: Any, ids: dict[str, str]) -> str:
    params = [p.name for p in route.dependant.path_params]
    missing = [p for p in params if p not in ids]
    assert not missing, (
        f"{route.path}: no test resource for path parameter(s) {missing}; create one in "
        "`project_a` so this route's isolation is checked"
    )
    return route.path.format(**{p: ids[p] for p in params})


def _client_with_key(client: TestClient, key: str) -> TestClient:
    other = TestClient(client.app)
    other.headers["Authorization"] = f"Bearer {key}"
    return other


def _new_key(client: TestClient, project_id: str, scopes: list[str]) -> str:
    response = client.post(
        "/v1/keys", json={"project_id": project_id, "name": "+".join(scopes), "scopes": scopes}
    )
    assert response.status_code == 201, response.text
    return str(response.json()["key"])


@pytest.fixture
def project_a(client: TestClient, tmp_path: Path) -> dict[str, str]:
    """Resources of the admin key's project, keyed by the path parameter that names each."""
    model_path = make_mlp(tmp_path / "m.onnx")
    model = upload_model(client, model_path)
    dataset = upload_dataset(client, make_dataset(tmp_path / "d.npz", model_path))
    job = client.post(
        "/v1/jobs",
        json={"model_id": model["id"], "passes": [{"kind": "quantize", "method": "dynamic"}]},
    )
    assert job.status_code == 202, job.text
    job_id = job.json()["id"]
    batch = client.post(
        "/v1/batches",
        json={
            "jobs": [{"model_id": model["id"], "passes": [{"kind": "quantize", "method": "fp16"}]}]
        },
    )
    assert batch.status_code == 202, batch.text
    project_id = next(p["id"] for p in client.get("/v1/projects").json() if p["name"] == "default")
    key_id = client.get("/v1/keys").json()[0]["id"]

    # No worker runs here, so the artifact a finished job would have is written directly.
    artifact_id = store_report(project_id, job_id, b'{"metrics": {}}', tmp_path)
    store_report(
        project_id, job_id, b'{"inputs": {}}', tmp_path, kind="provenance", name="provenance.json"
    )
    return {
        "model_id": model["id"],
        "dataset_id": dataset["id"],
        "job_id": job_id,
        "batch_id": batch.json()["id"],
        "artifact_id": artifact_id,
        "project_id": project_id,
        "key_id": key_id,
    }


@pytest.fixture
def project_b(client: TestClient) -> dict[str, TestClient]:
    project = client.post("/v1/projects", json={"name": "team-b"}).json()
    return {
        # Even the admin scope gives no way into another project's resources.
        "admin": _client_with_key(client, _new_key(client, project["id"], ["admin"])),
        "read_write": _client_with_key(client, _new_key(client, project["id"], ["read", "write"])),
    }


def test_every_route_needs_a_key_or_is_public(client: TestClient) -> None:
    guards = {require_read, require_write, require_admin, require_instance}
    unguarded = {
        f"{sorted(r.methods)} {r.path}"
        for r in app_routes(client.app)
        if not guards & _dependency_calls(r) and r.path not in PUBLIC_PATHS
    }
    assert unguarded == set(), "routes that take no ReadKey, WriteKey, AdminKey or InstanceKey"


def test_another_projects_key_gets_404_on_every_route(
    client: TestClient, project_a: dict[str, str], project_b: dict[str, TestClient]
) -> None:
    routes = app_routes(client.app)
    calls = [
        (method, route)
        for route in routes
        if route.dependant.path_params and not _is_admin(route)
        for method in _methods(route)
    ]
    calls.sort(key=lambda call: METHOD_ORDER.index(call[0]))
    assert len(calls) >= 9  # models, datasets, jobs and artifacts routes are all found

    for method, route in calls:
        url = _url(route, project_a)
        response = project_b["admin"].request(method, url)
        assert response.status_code == 404, (
            f"{method} {url} with another project's key answered {response.status_code}, "
            f"not 404: {response.text[:300]}"
        )
        assert response.headers["content-type"] == "application/problem+json"

    # The owner's key reaches every one of them (deletes last, after every read).
    for method, route in calls:
        url = _url(route, project_a)
        response = client.request(method, url)
        assert response.status_code != 404, f"{method} {url}: {response.text[:300]}"
        assert response.status_code < 500, f"{method} {url}: {response.text[:300]}"


def test_scopes_on_every_route(
    client: TestClient, project_a: dict[str, str], project_b: dict[str, TestClient]
) -> None:
    routes = app_routes(client.app)
    admin_routes = [r for r in routes if _is_admin(r)]
    assert {r.path for r in admin_routes} >= {"/v1/keys", "/v1/projects"}
    for route in admin_routes:
        for method in _methods(route):
            url = _url(route, project_a)
            response = project_b["read_write"].request(method, url, json={})
            assert response.status_code == 403, f"{method} {url}: {response.text[:300]}"

    viewer = _client_with_key(client, _new_key(client, project_a["project_id"], ["read"]))
    changing = [
        (method, route)
        for route in routes
        for method in _methods(route)
        if method not in ("GET", "HEAD")
    ]
    assert len(changing) >= 8
    for method, route in changing:
        url = _url(route, project_a)
        response = viewer.request(method, url, json={})
        assert response.status_code == 403, f"{method} {url}: {response.text[:300]}"

    # Nothing was changed by those attempts.
    assert all(k["revoked_at"] is None for k in client.get("/v1/keys").json())
    assert client.get(f"/v1/jobs/{project_a['job_id']}").json()["status"] == "queued"
    assert client.get(f"/v1/models/{project_a['model_id']}").status_code == 200


def test_lists_and_references_never_reach_another_project(
    client: TestClient, project_a: dict[str, str], project_b: dict[str, TestClient], tmp_path: Path
) -> None:
    resource_ids = {project_a[k] for k in ("model_id", "dataset_id", "job_id", "artifact_id")}
    lists = [
        route
        for route in app_routes(client.app)
        if "GET" in route.methods
        and not route.dependant.path_params
        and not _is_admin(route)
        and route.path not in PUBLIC_PATHS
    ]
    assert {r.path for r in lists} >= {"/v1/models", "/v1/datasets", "/v1/jobs"}
    seen_by_owner = ""
    for route in lists:
        # Filters that name one of A's resources must not reach it either.
        query = {
            q.name: project_a[q.name] for q in route.dependant.query_params if q.name in project_a
        }
        other = project_b["admin"].get(route.path, params=query)
        assert other.status_code == 200, f"{route.path}: {other.text[:300]}"
        leaked = [i for i in resource_ids if i in other.text]
        assert leaked == [], f"{route.path} shows another project's {leaked}"
        seen_by_owner += client.get(route.path).text
    # The owner does see them, so the lists above were not empty by accident.
    for name in ("model_id", "dataset_id", "job_id"):
        assert project_a[name] in seen_by_owner

    # Nor can a new dataset or job name one of A's models.
    model_path = make_mlp(tmp_path / "m2.onnx")
    data = make_dataset(tmp_path / "d2.npz", model_path)
    with data.open("rb") as handle:
        response = project_b["admin"].post(
            "/v1/datasets",
            files={"file": (data.name, handle)},
            data={"model_id": project_a["model_id"]},
        )
    assert response.status_code == 404, response.text
    spec = {
        "model_id": project_a["model_id"],
        "passes": [{"kind": "quantize", "method": "dynamic"}],
    }
    assert project_b["admin"].post("/v1/jobs", json=spec).status_code == 422
    assert project_b["admin"].get("/v1/datasets").json()["items"] == []
