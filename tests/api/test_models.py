"""Uploading, inspecting, listing, downloading and deleting models over HTTP."""

from __future__ import annotations

import hashlib
from pathlib import Path

from fastapi.testclient import TestClient

from tests.api.helpers import upload_model
from tests.models.onnx_basic import make_cnn, make_mlp


def test_upload_inspects_the_model(client: TestClient, tmp_path: Path) -> None:
    path = make_mlp(tmp_path / "mlp.onnx", in_features=16, classes=4)
    body = upload_model(client, path)

    assert body["id"].startswith("mdl_")
    assert body["format"] == "onnx"
    assert body["opset"] == 17
    assert body["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert body["size_bytes"] == path.stat().st_size
    assert body["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["N", 16]}]
    assert body["outputs"] == [{"name": "logits", "dtype": "float32", "shape": ["N", 4]}]
    assert body["parameter_count"] == 16 * 64 + 64 + 64 * 64 + 64 + 64 * 4 + 4


def test_get_list_download_delete(client: TestClient, tmp_path: Path) -> None:
    first = upload_model(client, make_mlp(tmp_path / "a.onnx"))
    second = upload_model(client, make_cnn(tmp_path / "b.onnx"))

    assert client.get(f"/v1/models/{first['id']}").json()["name"] == "a.onnx"
    listed = client.get("/v1/models").json()
    assert [m["id"] for m in listed["items"]] == [second["id"], first["id"]]

    page = client.get("/v1/models", params={"page_size": 1}).json()
    assert [m["id"] for m in page["items"]] == [second["id"]]
    rest = client.get("/v1/models", params={"page_size": 1, "page_token": page["next_page_token"]})
    assert [m["id"] for m in rest.json()["items"]] == [first["id"]]
    assert rest.json()["next_page_token"] is None

    download = client.get(f"/v1/models/{first['id']}/content")
    assert download.status_code == 200
    assert download.content == (tmp_path / "a.onnx").read_bytes()
    assert download.headers["etag"] == f'"{first["sha256"]}"'

    assert client.delete(f"/v1/models/{first['id']}").status_code == 204
    gone = client.get(f"/v1/models/{first['id']}")
    assert gone.status_code == 404
    assert gone.headers["content-type"] == "application/problem+json"
    assert client.get(f"/v1/models/{first['id']}/content").status_code == 404


def test_not_an_onnx_model_is_rejected_with_a_reason(client: TestClient, tmp_path: Path) -> None:
    response = client.post("/v1/models", files={"file": ("m.onnx", b"this is not protobuf")})
    assert response.status_code == 422
    problem = response.json()
    assert problem["status"] == 422
    assert "not a valid ONNX model" in problem["detail"]
    assert client.get("/v1/models").json()["items"] == []


def test_truncated_model_is_rejected(client: TestClient, tmp_path: Path) -> None:
    data = make_mlp(tmp_path / "m.onnx").read_bytes()
    response = client.post("/v1/models", files={"file": ("m.onnx", data[: len(data) // 2])})
    assert response.status_code == 422


def test_oversized_upload_is_413_and_leaves_nothing(
    client: TestClient, service_env: dict[str, str]
) -> None:
    limit = int(service_env["MODELPRESS_MAX_UPLOAD_BYTES"])
    response = client.post("/v1/models", files={"file": ("big.onnx", b"\0" * (limit + 1))})
    assert response.status_code == 413
    assert "MODELPRESS_MAX_UPLOAD_BYTES" in response.json()["detail"]
    assert client.get("/v1/models").json()["items"] == []
    tmp_dir = Path(service_env["MODELPRESS_DATA_DIR"]) / "tmp"
    assert list(tmp_dir.glob("upload-*")) == []


def test_missing_file_field_and_wrong_content_type(client: TestClient) -> None:
    assert client.post("/v1/models", files={"other": ("x", b"1")}).status_code == 422
    assert client.post("/v1/models", json={"file": "x"}).status_code == 415


def test_range_download(client: TestClient, tmp_path: Path) -> None:
    path = make_mlp(tmp_path / "m.onnx")
    model = upload_model(client, path)
    data = path.read_bytes()
    url = f"/v1/models/{model['id']}/content"

    partial = client.get(url, headers={"Range": "bytes=10-19"})
    assert partial.status_code == 206
    assert partial.content == data[10:20]
    assert partial.headers["content-range"] == f"bytes 10-19/{len(data)}"

    suffix = client.get(url, headers={"Range": "bytes=-5"})
    assert suffix.content == data[-5:]

    assert client.get(url, headers={"Range": f"bytes={len(data) + 5}-"}).status_code == 416
    assert client.get(url, headers={"If-None-Match": f'"{model["sha256"]}"'}).status_code == 304
