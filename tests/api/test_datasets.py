"""Uploading datasets: validated without loading them, pickles refused."""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient

from tests.api.helpers import upload_dataset, upload_model
from tests.models.onnx_basic import make_dataset, make_mlp


def test_upload_describes_the_arrays(client: TestClient, tmp_path: Path) -> None:
    model_path = make_mlp(tmp_path / "m.onnx", in_features=16, classes=4)
    dataset = upload_dataset(client, make_dataset(tmp_path / "d.npz", model_path, samples=40))
    assert dataset["num_samples"] == 40
    assert dataset["has_labels"] is True
    assert dataset["arrays"]["x"] == {"dtype": "float32", "shape": [40, 16]}
    assert "labels" not in dataset["arrays"]
    assert client.get(f"/v1/datasets/{dataset['id']}").json() == dataset
    assert [d["id"] for d in client.get("/v1/datasets").json()["items"]] == [dataset["id"]]
    assert client.delete(f"/v1/datasets/{dataset['id']}").status_code == 204
    assert client.get(f"/v1/datasets/{dataset['id']}").status_code == 404


def test_checked_against_a_model_when_asked(client: TestClient, tmp_path: Path) -> None:
    model = upload_model(client, make_mlp(tmp_path / "m.onnx", in_features=16))
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, x=np.zeros((4, 3), np.float64))
    with wrong.open("rb") as handle:
        response = client.post(
            "/v1/datasets", files={"file": ("wrong.npz", handle)}, data={"model_id": model["id"]}
        )
    assert response.status_code == 422
    assert "x" in response.json()["detail"]
    assert client.get("/v1/datasets").json()["items"] == []


def test_sample_counts_are_checked_against_the_model(client: TestClient, tmp_path: Path) -> None:
    """Arrays for inputs without a batch axis are given once, so only with the model can a
    short array be told from one given once."""
    model = upload_model(client, make_mlp(tmp_path / "m.onnx", in_features=2))
    mismatched = tmp_path / "mismatched.npz"
    np.savez(mismatched, x=np.zeros((4, 2), np.float32), y=np.zeros((5, 2), np.float32))
    with mismatched.open("rb") as handle:
        accepted = client.post("/v1/datasets", files={"file": ("d.npz", handle)})
    assert accepted.status_code == 201, accepted.text
    short = tmp_path / "short.npz"
    np.savez(short, x=np.zeros((4, 2), np.float32), labels=np.zeros(5, np.int64))
    with short.open("rb") as handle:
        refused = client.post(
            "/v1/datasets", files={"file": ("d.npz", handle)}, data={"model_id": model["id"]}
        )
    assert refused.status_code == 422
    assert "different numbers of samples" in refused.json()["detail"]


def _npz_with_member(name: str, payload: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(name, payload)
    return buffer.getvalue()


class _RunsCode:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("pwned",))


def test_bad_datasets_are_rejected_with_a_reason(client: TestClient, tmp_path: Path) -> None:
    object_array = io.BytesIO()
    np.save(object_array, np.array([_RunsCode()], dtype=object), allow_pickle=True)
    bad_labels = io.BytesIO()
    np.savez(bad_labels, x=np.zeros((4, 2), np.float32), labels=np.zeros(4, np.float32))
    cases = {
        "pickle": pickle.dumps(_RunsCode()),
        "object array": _npz_with_member("x.npy", object_array.getvalue()),
        "not a zip": b"hello",
        "float labels": bad_labels.getvalue(),
    }
    for label, payload in cases.items():
        response = client.post("/v1/datasets", files={"file": ("d.npz", payload)})
        assert response.status_code == 422, label
        assert response.json()["detail"].startswith("not a usable dataset"), label
    assert client.get("/v1/datasets").json()["items"] == []
