"""The models and datasets pages: a project's own only, the upload forms (streamed, held to
the upload limit, refused without the CSRF token) and the downloads."""

from __future__ import annotations

import hashlib
import pickle
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.api.helpers import upload_dataset, upload_model
from tests.models.onnx_basic import make_dataset, make_mlp
from tests.web.conftest import sign_in


def other_project(client: TestClient, tmp_path: Path) -> dict[str, str]:
    """A model and a dataset of another project, uploaded with that project's key."""
    project = client.post("/v1/projects", json={"name": "team-b"}).json()
    key = client.post(
        "/v1/keys", json={"project_id": project["id"], "name": "b", "scopes": ["read", "write"]}
    ).json()["key"]
    other = TestClient(client.app)
    other.headers["Authorization"] = f"Bearer {key}"
    model_path = make_mlp(tmp_path / "secret-model.onnx", seed=7)
    model = upload_model(other, model_path)
    dataset = upload_dataset(other, make_dataset(tmp_path / "secret-data.npz", model_path))
    return {"model_id": model["id"], "dataset_id": dataset["id"]}


def test_pages_show_the_projects_own_models_and_datasets_only(
    pages: TestClient, client: TestClient, tmp_path: Path
) -> None:
    model_path = make_mlp(tmp_path / "mine.onnx", in_features=16, classes=4, opset=17)
    mine = upload_model(client, model_path)
    data = upload_dataset(client, make_dataset(tmp_path / "mine.npz", model_path))
    theirs = other_project(client, tmp_path)
    job = client.post(
        "/v1/jobs",
        json={
            "model_id": mine["id"],
            "passes": [{"kind": "quantize", "method": "dynamic"}],
            "evaluate": {"dataset_id": data["id"]},
        },
    )
    assert job.status_code == 202, job.text
    sign_in(pages)

    models = pages.get("/models")
    assert models.status_code == 200
    assert f'href="/models/{mine["id"]}"' in models.text
    assert theirs["model_id"] not in models.text and "secret-model" not in models.text

    page = pages.get(f"/models/{mine['id']}")
    assert page.status_code == 200
    text = re.sub(r"<[^>]+>", "", page.text)
    assert "mine.onnx" in text and "Opset17" in text.replace(" ", "").replace("\n", "")
    # The input with its dynamic batch dimension, the output, the parameter count.
    assert "[N, 16]" in text and "[N, 4]" in text and "float32" in text
    assert f"{mine['parameter_count']:,}" in text and mine["sha256"] in text
    assert f'href="/jobs/{job.json()["id"]}"' in page.text

    datasets = pages.get("/datasets")
    assert f'href="/datasets/{data["id"]}"' in datasets.text
    assert theirs["dataset_id"] not in datasets.text
    dataset_page = pages.get(f"/datasets/{data['id']}")
    assert (
        dataset_page.status_code == 200 and f'href="/jobs/{job.json()["id"]}"' in dataset_page.text
    )

    for url in (
        f"/models/{theirs['model_id']}",
        f"/models/{theirs['model_id']}/download",
        f"/datasets/{theirs['dataset_id']}",
        f"/datasets/{theirs['dataset_id']}/download",
    ):
        other = pages.get(url)
        assert other.status_code == 404, url
        assert "text/html" in other.headers["content-type"] and "was not found" in other.text


def test_the_original_file_downloads_from_its_page(
    pages: TestClient, client: TestClient, tmp_path: Path
) -> None:
    model_path = make_mlp(tmp_path / "m.onnx")
    model = upload_model(client, model_path)
    sign_in(pages)
    page = pages.get(f"/models/{model['id']}")
    assert f'href="/models/{model["id"]}/download"' in page.text
    download = pages.get(f"/models/{model['id']}/download")
    assert download.status_code == 200
    assert hashlib.sha256(download.content).hexdigest() == model["sha256"]
    pages.cookies.clear()
    assert pages.get(f"/models/{model['id']}/download", follow_redirects=False).status_code == 303


def test_upload_form_stores_the_model_and_opens_its_page(pages: TestClient, tmp_path: Path) -> None:
    token = sign_in(pages)
    model_path = make_mlp(tmp_path / "tiny.onnx")
    with model_path.open("rb") as handle:
        # Without script: a plain multipart post whose action URL carries the token.
        response = pages.post(
            f"/models/upload?csrf_token={token}",
            files={"file": ("tiny.onnx", handle)},
            data={"name": "my tiny model"},
            follow_redirects=False,
        )
    assert response.status_code == 303, response.text
    model_page = pages.get(response.headers["location"])
    assert "<h1>my tiny model</h1>" in model_page.text

    with model_path.open("rb") as handle:
        # The page's script: the header, and the outcome as JSON.
        answer = pages.post(
            "/models/upload",
            files={"file": ("tiny.onnx", handle)},
            headers={"X-CSRF-Token": token, "Accept": "application/json"},
        )
    assert answer.status_code == 201 and answer.json()["url"].startswith("/models/mdl")


def test_upload_without_the_csrf_token_is_refused_and_stores_nothing(
    pages: TestClient, client: TestClient, tmp_path: Path
) -> None:
    sign_in(pages)
    model_path = make_mlp(tmp_path / "tiny.onnx")
    for url in ("/models/upload", "/models/upload?csrf_token=forged"):
        with model_path.open("rb") as handle:
            response = pages.post(url, files={"file": ("tiny.onnx", handle)})
        assert response.status_code == 403
        assert "security token" in response.text
    assert client.get("/v1/models").json()["items"] == []


def test_a_refused_upload_says_why_next_to_the_form_and_stores_nothing(
    pages: TestClient, client: TestClient, tmp_path: Path
) -> None:
    token = sign_in(pages)

    class Hostile:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (print, ("pwned",))

    hostile = tmp_path / "model.pt"
    hostile.write_bytes(pickle.dumps(Hostile()))
    with hostile.open("rb") as handle:
        page = pages.post(
            f"/models/upload?csrf_token={token}", files={"file": ("model.pt", handle)}
        )
    assert page.status_code == 422
    refusal = re.search(r'id="upload-error"[^>]*>([^<]+)<', page.text)
    assert refusal and "The upload was refused" in refusal.group(1)
    assert "Nothing was stored" in refusal.group(1)

    with hostile.open("rb") as handle:
        answer = pages.post(
            "/models/upload",
            files={"file": ("model.pt", handle)},
            headers={"X-CSRF-Token": token, "Accept": "application/json"},
        )
    assert answer.status_code == 422 and answer.json()["error"]

    not_a_dataset = tmp_path / "data.npz"
    not_a_dataset.write_bytes(b"not a zip")
    with not_a_dataset.open("rb") as handle:
        page = pages.post(
            f"/datasets/upload?csrf_token={token}", files={"file": ("data.npz", handle)}
        )
    assert page.status_code == 422 and "not a usable dataset" in page.text
    assert client.get("/v1/models").json()["items"] == []
    assert client.get("/v1/datasets").json()["items"] == []


@pytest.fixture
def small_limits(service_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Uploads up to 3 MB, other bodies up to 64 KiB: the upload streams past the latter."""
    monkeypatch.setenv("MODELPRESS_MAX_UPLOAD_BYTES", str(3_000_000))
    monkeypatch.setenv("MODELPRESS_MAX_JSON_BODY_BYTES", str(64 * 1024))
    from core.settings import get_settings

    get_settings.cache_clear()


def test_uploads_stream_past_the_body_limit_and_stop_at_the_upload_limit(
    small_limits: None, pages: TestClient, client: TestClient, tmp_path: Path
) -> None:
    token = sign_in(pages)
    model_path = make_mlp(tmp_path / "wide.onnx", in_features=256, hidden=512)
    assert 64 * 1024 < model_path.stat().st_size < 3_000_000
    with model_path.open("rb") as handle:
        response = pages.post(
            f"/models/upload?csrf_token={token}",
            files={"file": ("wide.onnx", handle)},
            follow_redirects=False,
        )
    assert response.status_code == 303, response.text

    too_big = tmp_path / "big.onnx"
    too_big.write_bytes(b"\0" * 3_100_000)
    with too_big.open("rb") as handle:
        page = pages.post(
            f"/models/upload?csrf_token={token}", files={"file": ("big.onnx", handle)}
        )
    assert page.status_code == 413
    assert "larger than the limit of 3000000 bytes" in page.text
    assert len(client.get("/v1/models").json()["items"]) == 1


def test_a_dataset_is_checked_against_the_model_chosen_in_the_form(
    pages: TestClient, client: TestClient, tmp_path: Path
) -> None:
    token = sign_in(pages)
    narrow = upload_model(client, make_mlp(tmp_path / "narrow.onnx", in_features=8))
    wide_path = make_mlp(tmp_path / "wide.onnx", in_features=16)
    data_path = make_dataset(tmp_path / "wide.npz", wide_path)
    form = pages.get("/datasets").text
    assert f'<option value="{narrow["id"]}">' in form
    with data_path.open("rb") as handle:
        refused = pages.post(
            f"/datasets/upload?csrf_token={token}",
            files={"file": ("wide.npz", handle)},
            data={"model_id": narrow["id"]},
        )
    assert refused.status_code == 422
    refusal = re.search(r'id="upload-error"[^>]*>([^<]+)<', refused.text)
    assert refusal and "Nothing was stored" in refusal.group(1)
    assert client.get("/v1/datasets").json()["items"] == []
    with data_path.open("rb") as handle:
        stored = pages.post(
            f"/datasets/upload?csrf_token={token}",
            files={"file": ("wide.npz", handle)},
            follow_redirects=False,
        )
    assert stored.status_code == 303
    page = pages.get(stored.headers["location"]).text
    assert "<h1>wide.npz</h1>" in page and "yes: accuracy can be measured" in page
