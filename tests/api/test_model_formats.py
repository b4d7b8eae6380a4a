"""Uploading PyTorch programs and ONNX models with external data over HTTP."""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.models.torch_programs import (
    CLASSES,
    IN_FEATURES,
    make_external_data_zip,
    save_pt2,
    save_state_dict,
    save_torchscript,
)


@pytest.fixture(scope="module")
def torch_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("torch")
    return {
        "pt2": save_pt2(folder / "tiny.pt2"),
        "torchscript": save_torchscript(folder / "tiny.pt"),
        "state_dict": save_state_dict(folder / "weights.pt"),
    }


def post(client: TestClient, path: Path, **fields: str) -> Any:
    with path.open("rb") as handle:
        return client.post("/v1/models", files={"file": (path.name, handle)}, data=fields or None)


def assert_nothing_left(client: TestClient, service_env: dict[str, str]) -> None:
    assert client.get("/v1/models").json()["items"] == []
    tmp_dir = Path(service_env["MODELPRESS_DATA_DIR"]) / "tmp"
    assert not tmp_dir.exists() or list(tmp_dir.rglob("*")) == []


def test_onnx_zip_with_external_data_is_accepted(client: TestClient, tmp_path: Path) -> None:
    path = make_external_data_zip(tmp_path / "mlp.zip", tmp_path / "build")
    response = post(client, path)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["format"] == "onnx_zip"
    assert body["name"] == "mlp.zip"
    assert body["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["N", 32]}]
    assert body["outputs"] == [{"name": "logits", "dtype": "float32", "shape": ["N", 10]}]
    assert body["parameter_count"] == 32 * 64 + 64 + 64 * 64 + 64 + 64 * 10 + 10
    download = client.get(f"/v1/models/{body['id']}/content")
    assert download.content == path.read_bytes()


def test_pt2_is_accepted_and_described(
    client: TestClient, tmp_path: Path, torch_files: dict[str, Path]
) -> None:
    response = post(client, torch_files["pt2"])
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["format"] == "torch_export"
    assert body["opset"] == 18
    (tensor,) = body["inputs"]
    assert tensor["name"] == "x" and tensor["dtype"] == "float32"
    assert isinstance(tensor["shape"][0], str) and tensor["shape"][1] == IN_FEATURES
    assert body["outputs"][0]["shape"][1:] == [CLASSES]


def test_torchscript_needs_input_shapes(
    client: TestClient, service_env: dict[str, str], torch_files: dict[str, Path]
) -> None:
    refused = post(client, torch_files["torchscript"])
    assert refused.status_code == 422
    assert refused.headers["content-type"] == "application/problem+json"
    assert "'input_shapes'" in refused.json()["detail"]
    assert_nothing_left(client, service_env)

    accepted = post(
        client,
        torch_files["torchscript"],
        input_shapes=json.dumps({"x": ["batch", IN_FEATURES]}),
        name="tiny scripted",
    )
    assert accepted.status_code == 201, accepted.text
    body = accepted.json()
    assert body["format"] == "torchscript"
    assert body["name"] == "tiny scripted"
    assert body["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["batch", IN_FEATURES]}]
    assert [m["id"] for m in client.get("/v1/models").json()["items"]] == [body["id"]]


def test_torch_save_state_dict_is_refused_with_export_advice(
    client: TestClient, service_env: dict[str, str], torch_files: dict[str, Path]
) -> None:
    response = post(client, torch_files["state_dict"])
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert "torch.save" in detail
    assert "torch.export.save(ep, " in detail and "torch.onnx.export" in detail
    assert_nothing_left(client, service_env)


def test_raw_pickle_is_refused(
    client: TestClient, service_env: dict[str, str], tmp_path: Path
) -> None:
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps({"weights": [1.0, 2.0]}, protocol=4))
    response = post(client, path)
    assert response.status_code == 422
    assert "pickle" in response.json()["detail"]
    assert_nothing_left(client, service_env)


def test_zip_escaping_its_folder_is_refused(
    client: TestClient, service_env: dict[str, str], tmp_path: Path
) -> None:
    path = tmp_path / "evil.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("model.onnx", b"x")
        archive.writestr("../../model.onnx.data", b"y")
    response = post(client, path)
    assert response.status_code == 422
    assert "'..'" in response.json()["detail"]
    assert response.json()["type"].endswith("invalid_model")
    assert_nothing_left(client, service_env)
