from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from optimizers.datasets import check_fits, inspect_dataset, iter_batches, load_batch
from optimizers.errors import DatasetMismatchError, InvalidDatasetError
from optimizers.results import ModelInfo, TensorInfo
from tests.optimizers.helpers import save_npz


def _model(*inputs: tuple[str, str, list[int | str | None]]) -> ModelInfo:
    return ModelInfo(
        format="onnx",
        opset=17,
        ir_version=8,
        producer=None,
        inputs=[TensorInfo(name=n, dtype=d, shape=s) for n, d, s in inputs],
        outputs=[TensorInfo(name="y", dtype="float32", shape=["N", 4])],
        parameter_count=0,
        size_bytes=1,
    )


def test_describes_a_valid_dataset(tmp_path: Path) -> None:
    path = save_npz(
        tmp_path / "d.npz",
        x=np.zeros((10, 3, 4), np.float32),
        mask=np.zeros((10, 5), np.int64),
        labels=np.arange(10),
    )
    info = inspect_dataset(path)
    assert info.num_samples == 10
    assert info.has_labels and info.label_dtype == "int64"
    assert info.arrays["x"].dtype == "float32" and info.arrays["x"].shape == [10, 3, 4]
    assert info.arrays["mask"].shape == [10, 5]
    assert "labels" not in info.arrays
    assert info.size_bytes == path.stat().st_size


def test_compressed_archives_work(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez_compressed(path, x=np.arange(40, dtype=np.float32).reshape(10, 4))
    assert inspect_dataset(path).num_samples == 10
    assert load_batch(path, ["x"], np.array([3]))["x"].tolist() == [[12, 13, 14, 15]]


def test_object_arrays_are_rejected_without_unpickling(tmp_path: Path) -> None:
    path = save_npz(tmp_path / "d.npz", x=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(InvalidDatasetError, match="Python objects"):
        inspect_dataset(path)
    with pytest.raises(InvalidDatasetError, match="Python objects"):
        load_batch(path, ["x"], np.array([0]))


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": np.zeros((4, 2)), "labels": np.zeros((4, 2), np.int64)}, "1-D integer"),
        ({"x": np.zeros((4, 2)), "labels": np.zeros(4, np.float32)}, "1-D integer"),
        ({"x": np.zeros((0, 2))}, "zero samples"),
        ({"x": np.float32(3.0)}, "every array is a scalar"),
        ({"labels": np.zeros(4, np.int64)}, "only 'labels'"),
        ({"x": np.array(["a", "b"])}, "only bool, integer and float"),
    ],
)
def test_bad_arrays_are_rejected(
    tmp_path: Path, arrays: dict[str, np.ndarray], message: str
) -> None:
    path = save_npz(tmp_path / "d.npz", **arrays)
    with pytest.raises(InvalidDatasetError, match=message):
        inspect_dataset(path)


def test_not_a_zip_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    with path.open("wb") as file:
        np.save(file, np.zeros(3))  # a bare .npy, not an archive
    with pytest.raises(InvalidDatasetError, match=r"not an \.npz"):
        inspect_dataset(path)


def test_empty_archive_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path)
    with pytest.raises(InvalidDatasetError, match="no arrays"):
        inspect_dataset(path)


def test_foreign_members_and_broken_headers_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x.npy", b"not an npy header")
    with pytest.raises(InvalidDatasetError, match=r"not a valid \.npy"):
        inspect_dataset(path)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("payload.pkl", b"...")
    with pytest.raises(InvalidDatasetError, match=r"not \.npy arrays"):
        inspect_dataset(path)


def test_truncated_array_data_is_reported(tmp_path: Path) -> None:
    source = save_npz(tmp_path / "ok.npz", x=np.zeros((100, 8), np.float32))
    with zipfile.ZipFile(source) as archive:
        data = archive.read("x.npy")
    path = tmp_path / "d.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x.npy", data[: len(data) // 2])
    assert inspect_dataset(path).num_samples == 100  # the header alone looks fine
    with pytest.raises(InvalidDatasetError, match="truncated"):
        list(iter_batches(path, ["x"], 64))


def test_batches_match_numpy(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((23, 3, 2)).astype(np.float32)
    fortran = np.asfortranarray(rng.standard_normal((23, 5)))
    big_endian = np.arange(23, dtype=">i4")
    labels = np.arange(23) % 3
    path = save_npz(tmp_path / "d.npz", x=x, f=fortran, b=big_endian, labels=labels)

    batches = list(iter_batches(path, ["x", "f", "b"], 10))
    assert [len(b["x"]) for b in batches] == [10, 10, 3]
    np.testing.assert_array_equal(np.concatenate([b["x"] for b in batches]), x)
    np.testing.assert_array_equal(np.concatenate([b["f"] for b in batches]), fortran)
    np.testing.assert_array_equal(np.concatenate([b["b"] for b in batches]), big_endian)
    np.testing.assert_array_equal(np.concatenate([b["labels"] for b in batches]), labels)
    assert batches[0]["b"].dtype == np.dtype("int32")  # native byte order

    limited = list(iter_batches(path, ["x"], 4, limit=6))
    assert [len(b["x"]) for b in limited] == [4, 2]

    rows = load_batch(path, ["x", "f"], np.array([5, 2, 5, 7]))
    np.testing.assert_array_equal(rows["x"], x[[5, 2, 5, 7]])
    np.testing.assert_array_equal(rows["f"], fortran[[5, 2, 5, 7]])
    assert rows["x"].flags.writeable


def test_load_batch_rejects_unknown_names_and_rows(tmp_path: Path) -> None:
    path = save_npz(tmp_path / "d.npz", x=np.zeros((4, 2), np.float32))
    with pytest.raises(DatasetMismatchError, match="no array named 'y'"):
        load_batch(path, ["y"], np.array([0]))
    with pytest.raises(InvalidDatasetError, match="has 4 samples"):
        load_batch(path, ["x"], np.array([9]))


def test_check_fits_accepts_matching_data(tmp_path: Path) -> None:
    path = save_npz(
        tmp_path / "d.npz", x=np.zeros((6, 7, 4), np.float32), labels=np.zeros(6, np.int64)
    )
    model = _model(("x", "float32", ["N", "seq", 4]))
    check_fits(model, inspect_dataset(path), purpose="evaluate", need_labels=True)


@pytest.mark.parametrize(
    ("inputs", "need_labels", "message"),
    [
        ([("image", "float32", ["N", 4])], False, "no array for model input 'image'"),
        ([("x", "float16", ["N", 4])], False, "is float32 but the model input expects float16"),
        ([("x", "float32", ["N", 2, 2])], False, "rank 2"),
        ([("x", "float32", ["N", 5])], False, "size 4 on axis 1 but the model input needs 5"),
        ([("x", "float32", [None, 4])], True, "no 'labels' array"),
        (
            [("x", "float32", ["N", 4]), ("z", "float32", ["N", 4])],
            False,
            "different numbers of samples .*'z' has 5, the dataset 6",
        ),
    ],
)
def test_check_fits_names_the_problem(
    tmp_path: Path,
    inputs: list[tuple[str, str, list[int | str | None]]],
    need_labels: bool,
    message: str,
) -> None:
    path = save_npz(
        tmp_path / "d.npz", x=np.zeros((6, 4), np.float32), z=np.zeros((5, 4), np.float32)
    )
    with pytest.raises(DatasetMismatchError, match=message) as exc:
        check_fits(
            _model(*inputs), inspect_dataset(path), purpose="evaluate", need_labels=need_labels
        )
    assert exc.value.message.startswith("evaluate dataset")
