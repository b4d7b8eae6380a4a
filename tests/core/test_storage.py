"""Both storage back ends behave the same: a local folder, and S3 through a real S3 API
served on loopback (moto's server mode)."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.storage import LocalStorage, S3Storage, Storage, StorageError
from tests.conftest import make_bucket


@pytest.fixture(params=["local", "s3"])
def storage(
    request: pytest.FixtureRequest, tmp_path: Path, s3_endpoint: str, s3_credentials: None
) -> Storage:
    if request.param == "local":
        return LocalStorage(tmp_path / "objects")
    bucket = make_bucket(s3_endpoint)
    return S3Storage(f"s3://{bucket}/prefix", endpoint_url=s3_endpoint, region="us-east-1")


def test_put_fetch_range_delete(storage: Storage, tmp_path: Path) -> None:
    data = bytes(range(256)) * 40
    source = tmp_path / "upload.bin"
    source.write_bytes(data)
    storage.put_file("p1/models/m1/model.onnx", source)
    assert not source.exists()  # moved, not left behind

    assert storage.exists("p1/models/m1/model.onnx")
    assert storage.size("p1/models/m1/model.onnx") == len(data)
    fetched = storage.fetch_to("p1/models/m1/model.onnx", tmp_path / "out" / "m.onnx")
    assert fetched.read_bytes() == data
    assert b"".join(storage.iter_range("p1/models/m1/model.onnx", 100, 199)) == data[100:200]
    storage.ping()

    storage.delete_prefix("p1/models/m1")
    assert not storage.exists("p1/models/m1/model.onnx")
    with pytest.raises(StorageError):
        storage.fetch_to("p1/models/m1/model.onnx", tmp_path / "gone.onnx")


@pytest.mark.parametrize("key", ["../escape", "a/../../b", "/abs", "a//b", "a\\b", ""])
def test_keys_that_would_escape_are_refused(storage: Storage, tmp_path: Path, key: str) -> None:
    source = tmp_path / "f"
    source.write_bytes(b"x")
    with pytest.raises(StorageError):
        storage.put_file(key, source)


def test_deleting_a_folder_leaves_its_neighbours_and_listing_finds_every_object(
    storage: Storage, tmp_path: Path
) -> None:
    keys = ["p1/jobs/job_1/attempt-1/a.onnx", "p1/jobs/job_12/report.json", "p1/jobs/job_1x"]
    for key in keys:
        source = tmp_path / "object"
        source.write_bytes(key.encode())
        storage.put_file(key, source)
    listed = list(storage.list_objects(""))
    assert sorted(o.key for o in listed) == sorted(keys)
    assert all(o.stored_at.tzinfo is not None for o in listed)
    assert [o.key for o in storage.list_objects("p1/jobs/job_12")] == [keys[1]]

    storage.delete_prefix("p1/jobs/job_1")
    assert sorted(o.key for o in storage.list_objects("")) == sorted(keys[1:])
    storage.delete("p1/jobs/job_1x")
    assert [o.key for o in storage.list_objects("p1")] == [keys[1]]
