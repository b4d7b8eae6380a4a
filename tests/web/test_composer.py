"""The job composer: a form generated from the API's JobSpec schema, checked by the API's own
code, its messages next to the fields, the JSON editor, sweeps and prefilled links."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient

from tests.api.helpers import upload_dataset, upload_model
from tests.models.onnx_basic import make_dataset, make_mlp
from tests.web.conftest import sign_in
from tests.web.test_library_pages import other_project
from web.compose_form import VARIANT, pass_variants


@pytest.fixture
def library(client: TestClient, tmp_path: Path) -> dict[str, str]:
    model_path = make_mlp(tmp_path / "tiny.onnx")
    model = upload_model(client, model_path)
    dataset = upload_dataset(client, make_dataset(tmp_path / "tiny.npz", model_path))
    return {"model_id": model["id"], "dataset_id": dataset["id"]}


def _controls(page: str) -> dict[str, str]:
    """name -> the element's opening tag, for every control of the page."""
    return {
        html.unescape(m.group(2)): m.group(0)
        for m in re.finditer(r'<(input|select|textarea)[^>]*\bname="([^"]+)"[^>]*>', page)
    }


def _schema_paths(schema: dict[str, Any], node: dict[str, Any], prefix: str) -> list[str]:
    """Every option of `node` in the API's schema as a dotted path; objects are walked."""
    defs = schema["$defs"]

    def resolve(n: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in n:
            n = defs[n["$ref"].rsplit("/", 1)[-1]]
        options = [o for o in n.get("anyOf", []) if o != {"type": "null"}]
        return resolve(options[0]) if len(options) == 1 else n

    found = []
    for key, prop in node.get("properties", {}).items():
        target = resolve(prop)
        path = f"{prefix}{key}"
        if key == "passes" and not prefix:
            continue  # each pass kind is checked on its own
        if target.get("type") == "object" and "properties" in target:
            found += _schema_paths(schema, target, path + ".")
        else:
            found.append(path)
    return found


def test_every_option_in_the_api_schema_has_a_control(
    pages: TestClient, client: TestClient, library: dict[str, str]
) -> None:
    """Read from /openapi.json, the schema the API publishes: an option added to a pass
    appears here without a change to the form."""
    schema = client.get("/openapi.json").json()["components"]["schemas"]
    job = schema["JobSpec"]
    sign_in(pages)
    top = _controls(pages.get("/jobs/new").text)
    missing = [p for p in _schema_paths({"$defs": schema}, job, "") if p not in top]
    assert missing == [], "options of the job without a control"
    assert pass_variants(), "no pass kinds found"
    for variant, pass_schema in pass_variants().items():
        spec = {"passes": [{"kind": variant.split("/")[0]}]}
        if "/" in variant:
            spec["passes"][0]["method"] = variant.split("/")[1]
        page = pages.get("/jobs/new?spec=" + quote(json.dumps(spec))).text
        controls = _controls(page)
        assert f'value="{variant}" selected' in controls.get(f"passes.0.{VARIANT}", "") or (
            f'<option value="{variant}" selected>' in page
        ), variant
        published = schema[pass_schema["title"]]
        for path in _schema_paths({"$defs": schema}, published, "passes.0."):
            if (
                path in ("passes.0.kind", "passes.0.method")
                and "const" in published["properties"][path.split(".")[-1]]
            ):
                continue  # the pass picker chooses these
            assert path in controls, f"{variant}: no control for {path}"


def test_the_form_submits_a_job_and_opens_its_page(
    pages: TestClient, client: TestClient, library: dict[str, str]
) -> None:
    token = sign_in(pages)
    response = pages.post(
        "/jobs/new",
        data={
            "csrf_token": token,
            "action": "submit",
            "model_id": library["model_id"],
            f"passes.0.{VARIANT}": "quantize/static",
            "passes.0.calibration.dataset_id": library["dataset_id"],
            "passes.0.calibration.samples": "16",
            "passes.0.per_channel": "true",
            "evaluate.dataset_id": library["dataset_id"],
            "benchmark.batch_sizes": "1, 4",
            "labels": '{"team": "vision"}',
        },
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text
    job_id = response.headers["location"].removeprefix("/jobs/")
    job = client.get(f"/v1/jobs/{job_id}").json()
    (quantize,) = job["spec"]["passes"]
    assert (quantize["kind"], quantize["method"], quantize["per_channel"]) == (
        "quantize",
        "static",
        True,
    )
    assert quantize["calibration"]["dataset_id"] == library["dataset_id"]
    assert quantize["calibration"]["samples"] == 16
    assert job["spec"]["benchmark"]["batch_sizes"] == [1, 4]
    assert job["spec"]["labels"] == {"team": "vision"}


def test_the_apis_message_is_shown_next_to_the_field_and_input_is_kept(
    pages: TestClient, client: TestClient, library: dict[str, str]
) -> None:
    token = sign_in(pages)
    response = pages.post(
        "/jobs/new",
        data={
            "csrf_token": token,
            "action": "submit",
            "model_id": library["model_id"],
            f"passes.0.{VARIANT}": "quantize/static",
            "passes.0.calibration.dataset_id": library["dataset_id"],
            "passes.0.calibration.samples": "lots",
            "benchmark.warmup": "-3",
            "passes.0.weight_type": "uint8",
            "labels": '{"team": vision}',
        },
    )
    assert response.status_code == 422
    page = response.text
    controls = _controls(page)
    samples = controls["passes.0.calibration.samples"]
    assert 'value="lots"' in samples and 'aria-invalid="true"' in samples
    assert 'aria-describedby="f-passes-0-calibration-samples-error' in samples
    error = re.search(r'id="f-passes-0-calibration-samples-error"[^>]*>(.*?)</p>', page)
    assert error and "valid integer" in error.group(1)
    warmup_error = re.search(r'id="f-benchmark-warmup-error"[^>]*>(.*?)</p>', page)
    assert warmup_error and "greater than or equal to 0" in warmup_error.group(1)
    assert '<option value="uint8" selected>' in page
    labels_error = re.search(r'id="f-labels-error"[^>]*>(.*?)</p>', page)
    assert labels_error and "not valid JSON" in labels_error.group(1)
    assert "{&#34;team&#34;: vision}</textarea>" in page
    assert client.get("/v1/jobs").json()["items"] == []


def test_a_model_of_another_project_is_refused_next_to_the_picker(
    pages: TestClient, client: TestClient, library: dict[str, str]
) -> None:
    token = sign_in(pages)
    response = pages.post(
        "/jobs/new",
        data={
            "csrf_token": token,
            "action": "submit",
            "model_id": "mdl_not_ours",
            f"passes.0.{VARIANT}": "quantize/fp16",
        },
    )
    assert response.status_code == 422
    error = re.search(r'id="f-model_id-error"[^>]*>(.*?)</p>', response.text)
    assert error and "no model 'mdl_not_ours' in this project" in html.unescape(error.group(1))
    # The pickers list the project's own: the id typed is kept, marked as not one of them.
    assert "mdl_not_ours (not in this project)" in response.text
    assert f'<option value="{library["model_id"]}"' in response.text


def test_passes_are_added_moved_and_removed_keeping_what_was_typed(
    pages: TestClient, library: dict[str, str]
) -> None:
    token = sign_in(pages)
    base = {"csrf_token": token, "model_id": library["model_id"]}
    added = pages.post(
        "/jobs/new",
        data={
            **base,
            "action": "add",
            f"passes.0.{VARIANT}": "prune",
            "passes.0.method": "structured",
            "passes.0.ratio": "0.3",
        },
    )
    assert added.status_code == 200
    controls = _controls(added.text)
    assert f"passes.1.{VARIANT}" in controls and 'value="0.3"' in controls["passes.0.ratio"]
    moved = pages.post(
        "/jobs/new",
        data={
            **base,
            "action": "up:1",
            f"passes.0.{VARIANT}": "prune",
            "passes.0.ratio": "0.3",
            f"passes.1.{VARIANT}": "quantize/fp16",
        },
    )
    controls = _controls(moved.text)
    assert 'value="0.3"' in controls["passes.1.ratio"]
    assert '<option value="quantize/fp16" selected>' in moved.text.split('id="f-passes-1')[0]
    removed = pages.post(
        "/jobs/new",
        data={
            **base,
            "action": "remove:0",
            f"passes.0.{VARIANT}": "prune",
            "passes.0.ratio": "0.3",
            f"passes.1.{VARIANT}": "quantize/fp16",
        },
    )
    controls = _controls(removed.text)
    assert f"passes.1.{VARIANT}" not in controls and "passes.0.ratio" not in controls


def test_the_json_editor_submits_and_its_errors_go_next_to_the_fields(
    pages: TestClient, client: TestClient, library: dict[str, str]
) -> None:
    token = sign_in(pages)
    spec = {
        "model_id": library["model_id"],
        "passes": [{"kind": "quantize", "method": "dynamic", "per_channel": True}],
        "benchmark": {"iterations": 0},
    }
    text = json.dumps(spec)
    refused = pages.post(
        "/jobs/new", data={"csrf_token": token, "action": "submit_json", "spec_json": text}
    )
    assert refused.status_code == 422
    error = re.search(r'id="f-benchmark-iterations-error"[^>]*>(.*?)</p>', refused.text)
    assert error and "greater than or equal to 1" in error.group(1)
    # What was typed stays in the editor as written, and the form shows the same spec.
    assert (
        html.escape(text, quote=False) in refused.text or text.replace('"', "&#34;") in refused.text
    )
    assert 'value="0"' in _controls(refused.text)["benchmark.iterations"]

    broken = pages.post(
        "/jobs/new", data={"csrf_token": token, "action": "submit_json", "spec_json": "{oops"}
    )
    assert broken.status_code == 422 and "The JSON does not parse" in broken.text

    spec["benchmark"] = {"iterations": 5, "warmup": 1}
    accepted = pages.post(
        "/jobs/new",
        data={"csrf_token": token, "action": "submit_json", "spec_json": json.dumps(spec)},
        follow_redirects=False,
    )
    assert accepted.status_code == 303
    job = client.get("/v1/jobs/" + accepted.headers["location"].removeprefix("/jobs/")).json()
    assert job["spec"]["passes"][0]["per_channel"] is True


def test_a_link_prefills_the_composer(pages: TestClient, library: dict[str, str]) -> None:
    sign_in(pages)
    spec = {
        "model_id": library["model_id"],
        "passes": [
            {
                "kind": "quantize",
                "method": "dynamic",
                "scope": "partial",
                "exclude": {"nodes": ["fc1", "fc2"]},
            }
        ],
    }
    page = pages.get("/jobs/new?spec=" + quote(json.dumps(spec))).text
    controls = _controls(page)
    assert '<option value="partial" selected>' in page
    assert re.search(r">fc1\nfc2</textarea>", page)
    assert "passes.0.exclude.nodes" in controls
    chosen = pages.get(f"/jobs/new?model_id={library['model_id']}").text
    assert f'<option value="{library["model_id"]}" selected>' in chosen


def test_a_sweep_starts_a_batch_and_a_bad_matrix_is_shown_by_it(
    pages: TestClient, client: TestClient, library: dict[str, str]
) -> None:
    token = sign_in(pages)
    form = {
        "csrf_token": token,
        "action": "sweep",
        "model_id": library["model_id"],
        f"passes.0.{VARIANT}": "quantize/dynamic",
        "benchmark.iterations": "5",
        "sweep_name": "per channel or not",
    }
    bad = pages.post("/jobs/new", data={**form, "sweep_matrix": "passes.3.per_channel: [true]"})
    assert bad.status_code == 422
    error = re.search(r'id="sweep-matrix-error"[^>]*>(.*?)</p>', bad.text, re.S)
    assert error and "passes.3" in error.group(1)
    response = pages.post(
        "/jobs/new",
        data={**form, "sweep_matrix": "passes.0.per_channel: [true, false]"},
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text
    batch_id = response.headers["location"].removeprefix("/jobs?batch_id=")
    batch = client.get(f"/v1/batches/{batch_id}").json()
    assert batch["name"] == "per channel or not"
    assert [j["spec"]["passes"][0].get("per_channel") for j in batch["jobs"]] == [True, False]


def test_composing_needs_the_write_scope_and_the_csrf_token(
    pages: TestClient, client: TestClient, library: dict[str, str]
) -> None:
    token = sign_in(pages)
    refused = pages.post(
        "/jobs/new",
        data={
            "action": "submit",
            "model_id": library["model_id"],
            f"passes.0.{VARIANT}": "quantize/fp16",
        },
    )
    assert refused.status_code == 403
    assert token and client.get("/v1/jobs").json()["items"] == []


def test_a_form_sent_twice_makes_one_job_and_another_spec_another(
    pages: TestClient, client: TestClient, library: dict[str, str]
) -> None:
    token = sign_in(pages)
    page = pages.get("/jobs/new").text
    submission = re.search(r'name="submission" value="([^"]+)"', page)
    assert submission
    form = {
        "csrf_token": token,
        "submission": submission.group(1),
        "action": "submit",
        "model_id": library["model_id"],
        f"passes.0.{VARIANT}": "quantize/fp16",
    }
    first = pages.post("/jobs/new", data=form, follow_redirects=False)
    again = pages.post("/jobs/new", data=form, follow_redirects=False)
    assert first.status_code == again.status_code == 303
    assert first.headers["location"] == again.headers["location"]
    changed = pages.post(
        "/jobs/new", data={**form, "benchmark.iterations": "7"}, follow_redirects=False
    )
    assert changed.headers["location"] != first.headers["location"]
    assert len(client.get("/v1/jobs").json()["items"]) == 2


def test_the_pickers_list_the_projects_own_models_and_datasets_only(
    pages: TestClient, client: TestClient, library: dict[str, str], tmp_path: Path
) -> None:
    theirs = other_project(client, tmp_path)
    sign_in(pages)
    page = pages.get("/jobs/new").text
    assert f'<option value="{library["model_id"]}"' in page
    assert theirs["model_id"] not in page and theirs["dataset_id"] not in page


def test_an_auto_search_is_composed_without_the_measuring_sections(
    pages: TestClient, client: TestClient, library: dict[str, str]
) -> None:
    """The auto pass's options (its budget, the techniques it may use) render and are sent;
    `evaluate` and `benchmark`, which the API refuses with an auto pass, are neither shown
    nor sent, and come back when the pass is changed back."""
    token = sign_in(pages)
    typed = {
        "csrf_token": token,
        "model_id": library["model_id"],
        f"passes.0.{VARIANT}": "auto",
        "benchmark.batch_sizes": "1, 4",
        "evaluate.max_drop": "0.05",
    }
    shown = pages.post("/jobs/new", data={**typed, "action": "retype:0"})
    assert shown.status_code == 200
    controls = _controls(shown.text)
    for name in ("objective", "dataset_id", "max_drop", "budget.trials", "budget.minutes"):
        assert f"passes.0.{name}" in controls, name
    assert controls["passes.0.allow"].startswith("<textarea")
    assert "Any of: <code>quantize</code>, <code>prune</code>, <code>distill</code>" in shown.text
    assert 'id="f-benchmark-batch_sizes"' not in shown.text
    assert 'id="f-evaluate-max_drop"' not in shown.text
    assert "not sent with an auto pass" in shown.text
    # What was typed in them is carried along unseen.
    assert '<input type="hidden" name="benchmark.batch_sizes" value="1, 4">' in shown.text

    submitted = pages.post(
        "/jobs/new",
        data={
            **typed,
            "action": "submit",
            "passes.0.dataset_id": library["dataset_id"],
            "passes.0.objective": "size",
            "passes.0.budget.trials": "6",
            "passes.0.budget.minutes": "5",
            "passes.0.allow": "quantize\nprune",
        },
        follow_redirects=False,
    )
    assert submitted.status_code == 303, submitted.text
    job_id = submitted.headers["location"].removeprefix("/jobs/")
    stored = client.get(f"/v1/jobs/{job_id}").json()["spec"]
    (auto,) = stored["passes"]
    assert auto["kind"] == "auto" and auto["objective"] == "size"
    assert auto["budget"] == {"trials": 6, "minutes": 5.0}
    assert auto["allow"] == ["quantize", "prune"]
    assert auto["dataset_id"] == library["dataset_id"]
    assert stored.get("evaluate") is None

    back = pages.post(
        "/jobs/new", data={**typed, f"passes.0.{VARIANT}": "quantize/dynamic", "action": "retype:0"}
    )
    assert 'value="1, 4"' in _controls(back.text)["benchmark.batch_sizes"]
