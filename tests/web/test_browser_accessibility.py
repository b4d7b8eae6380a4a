"""Every dashboard page, as a signed-in browser shows it: axe-core finds no serious or
critical problem, and the page fits 1280 px and 390 px wide without scrolling sideways.

The pages are the app's own GET routes, so a page added later is checked too; a path
parameter is filled with a real id made through /v1 (add one to `real_ids` for a new kind).
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Page

from tests.api.test_isolation import app_routes
from tests.integration.processes import Service
from tests.models.onnx_basic import make_dataset, make_mlp
from tests.web.test_browser_signin import browser_sign_in

WIDTHS = (1280, 390)
#: What axe reports that fails the test; "moderate" and "minor" are advice.
FAILING_IMPACTS = {"serious", "critical"}


def _upload(client: httpx.Client, route: str, path: Path) -> dict[str, Any]:
    with path.open("rb") as handle:
        response = client.post(route, files={"file": (path.name, handle)})
    assert response.status_code == 201, response.text
    return dict(response.json())


def _succeeded_batch(
    service: Service, client: httpx.Client, spec: dict[str, Any]
) -> tuple[str, str]:
    """A batch of one job, run to success: real ids for both a batch's and a job's pages."""
    created = client.post("/v1/batches", json={"name": "accessibility", "jobs": [spec]})
    assert created.status_code == 202, created.text
    batch_id = str(created.json()["id"])
    job_id = str(created.json()["jobs"][0]["id"])
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in {"succeeded", "failed", "canceled"}:
            assert job["status"] == "succeeded", f"{job['error']}\n{service.dump_logs()}"
            return batch_id, job_id
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} did not finish\n{service.dump_logs()}")


@pytest.fixture(scope="module")
def real_ids(dashboard: Service, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An id for each path parameter a dashboard page may have, made through /v1."""
    folder = tmp_path_factory.mktemp("a11y")
    model_path = make_mlp(folder / "mlp.onnx", in_features=16, hidden=32, classes=4)
    data_path = make_dataset(folder / "data.npz", model_path, samples=32)
    with dashboard.client() as client:
        model = _upload(client, "/v1/models", model_path)
        dataset = _upload(client, "/v1/datasets", data_path)
        batch_id, job_id = _succeeded_batch(
            dashboard,
            client,
            {
                "model_id": model["id"],
                "passes": [{"kind": "quantize", "method": "dynamic"}],
                "evaluate": {"dataset_id": dataset["id"], "max_drop": 0.1},
                "benchmark": {"batch_sizes": [1, 4], "warmup": 1, "iterations": 5},
            },
        )
        artifacts = client.get(f"/v1/jobs/{job_id}/artifacts").json()
        project = client.post("/v1/projects", json={"name": "accessibility"}).json()
        key = client.post(
            "/v1/keys",
            json={"project_id": project["id"], "name": "a11y reader", "scopes": ["read"]},
        ).json()
    return {
        "model_id": model["id"],
        "dataset_id": dataset["id"],
        "job_id": job_id,
        "batch_id": batch_id,
        "artifact_id": artifacts[0]["id"],
        "project_id": project["id"],
        "key_id": key["id"],
    }


def dashboard_pages(ids: dict[str, str]) -> list[str]:
    """The path of every dashboard GET route, its parameters filled from `ids`."""
    from api.main import create_app

    paths: list[str] = []
    for route in app_routes(create_app(), dashboard=True):
        if "GET" not in route.methods:
            continue
        names = re.findall(r"{(\w+)(?::\w+)?}", route.path)
        missing = [name for name in names if name not in ids]
        assert not missing, (
            f"GET {route.path}: no real id for {missing}; add one to real_ids in {__file__}"
        )
        paths.append(re.sub(r"{(\w+)(?::\w+)?}", lambda m: ids[m.group(1)], route.path))
    return sorted(set(paths))


#: The innermost elements that reach past the right edge: what makes a page scroll sideways.
_STICKING_OUT = """
[...document.body.querySelectorAll("*")]
  .filter((e) => e.getBoundingClientRect().right > document.documentElement.clientWidth + 1)
  .filter((e) => ![...e.children].some((c) =>
      c.getBoundingClientRect().right > document.documentElement.clientWidth + 1))
  .slice(0, 5)
  .map((e) => e.tagName.toLowerCase() + (e.className ? "." + e.className : "")
      + " " + JSON.stringify((e.textContent || "").trim().slice(0, 40)))
"""


def _readable(violations: list[dict[str, Any]]) -> str:
    lines = []
    for violation in violations:
        lines.append(f"  [{violation['impact']}] {violation['id']}: {violation['help']}")
        for node in violation["nodes"][:5]:
            lines.append(f"      {' '.join(node['target'])}: {node['html'][:160]}")
            if node.get("failureSummary"):
                lines.append("        " + node["failureSummary"].replace("\n", "\n        "))
    return "\n".join(lines)


def serious_violations(page: Page, axe: Axe | None = None) -> str:
    """axe-core's serious and critical findings on the page as it is now, readable; "" if none."""
    found = [
        v for v in (axe or Axe()).run(page).response["violations"] if v["impact"] in FAILING_IMPACTS
    ]
    return _readable(found)


def test_every_dashboard_page_passes_axe_and_fits_both_widths(
    page: Page, real_ids: dict[str, str]
) -> None:
    browser_sign_in(page)
    paths = dashboard_pages(real_ids)
    assert "/admin" in paths and "/jobs" in paths
    axe = Axe()
    problems: list[str] = []
    checked: list[str] = []
    for path in paths:
        # Downloads and fragments are not pages: a fragment is checked inside its page.
        probe = page.request.get(path)
        if "text/html" not in probe.headers.get("content-type", "") or "<html" not in probe.text():
            print(f"not a page, skipped: {path}")
            continue
        for width in WIDTHS:
            page.set_viewport_size({"width": width, "height": 800})
            response = page.goto(path)
            assert response is not None and response.ok, f"{path}: {response and response.status}"
            if path != "/signin":
                assert "/signin" not in page.url, f"{path} sent a signed-in browser to sign in"
            overflow = page.evaluate(
                "document.documentElement.scrollWidth - document.documentElement.clientWidth"
            )
            if overflow > 0:
                problems.append(
                    f"{path} at {width} px scrolls sideways by {overflow} px; sticking out: "
                    + ", ".join(page.evaluate(_STICKING_OUT))
                )
            serious = serious_violations(page, axe)
            if serious:
                problems.append(f"{path} at {width} px:\n{serious}")
        checked.append(path)
    print("checked:", ", ".join(checked))
    assert not problems, "\n".join(problems)
