"""Recognizing uploads by content, describing them without torch, and refusing unsafe zips and
pickles without ever running them."""

from __future__ import annotations

import json
import os
import pickle
import stat
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest

from optimizers.errors import InvalidModelError
from optimizers.external_data import model_size_bytes
from optimizers.formats.archive_safety import UnsafeArchiveError
from optimizers.formats.detect import detect_format
from optimizers.formats.kinds import UploadFormat
from optimizers.formats.onnx_zip import extract_onnx_zip
from optimizers.formats.upload import inspect_upload
from tests.models.torch_programs import (
    CLASSES,
    IN_FEATURES,
    make_external_data_zip,
    rewrite_zip,
    save_pt2,
    save_state_dict,
    save_torchscript,
)

LIMIT = 64 << 20


def inspect(path: Path, tmp_path: Path, **fields: str):
    return inspect_upload(path, max_total_bytes=LIMIT, fields=fields, tmp_dir=tmp_path / "tmp")


@pytest.fixture(scope="module")
def torch_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("torch")
    return {
        "pt2": save_pt2(folder / "tiny.pt2"),
        "torchscript": save_torchscript(folder / "tiny.pt"),
        "state_dict": save_state_dict(folder / "weights.pt"),
    }


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(zipfile.ZipInfo(name), data)
    return path


# --- zip safety ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("../escape.onnx", "'..'"),
        ("model/../../escape.onnx.data", "'..'"),
        ("/etc/model.onnx", "absolute"),
        ("C:/model.onnx", "absolute"),
        ("dir\\model.onnx", "backslash"),
    ],
)
def test_zip_with_unsafe_member_name_is_refused(tmp_path: Path, name: str, reason: str) -> None:
    path = write_zip(tmp_path / "m.zip", {name: b"x", "other.bin": b"y"})
    with pytest.raises(UnsafeArchiveError, match=reason):
        inspect(path, tmp_path)


def test_zip_member_name_with_nul_is_refused(tmp_path: Path) -> None:
    # zipfile cannot write such a name, so the bytes are patched in afterwards.
    path = write_zip(tmp_path / "m.zip", {"model.onnxX.txt": b"x"})
    path.write_bytes(path.read_bytes().replace(b"model.onnxX.txt", b"model.onnx\x00.txt"))
    reason = "NUL"
    with pytest.raises(UnsafeArchiveError, match=reason):
        inspect(path, tmp_path)


def test_zip_with_symlink_member_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "link.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("model.onnx", b"x")
        link = zipfile.ZipInfo("model.onnx.data")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(link, "/etc/passwd")
    with pytest.raises(UnsafeArchiveError, match="symbolic link"):
        inspect(path, tmp_path)


def test_zip_bomb_ratio_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bomb.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("model.onnx", b"x")
        archive.writestr("model.onnx.data", bytes(16 << 20))
    with pytest.raises(UnsafeArchiveError, match="zip bomb"):
        inspect(path, tmp_path)


def test_zip_expanding_past_the_limit_is_refused(tmp_path: Path) -> None:
    path = write_zip(tmp_path / "big.zip", {"model.onnx": b"x", "data.bin": os.urandom(4096)})
    with pytest.raises(UnsafeArchiveError, match="MODELPRESS_MAX_UPLOAD_BYTES"):
        inspect_upload(path, max_total_bytes=2048, fields={}, tmp_dir=tmp_path)


def test_zip_with_too_many_members_is_refused(tmp_path: Path) -> None:
    path = write_zip(tmp_path / "many.zip", {f"f{i}": b"" for i in range(10_001)})
    with pytest.raises(UnsafeArchiveError, match="10000"):
        inspect(path, tmp_path)


# --- pickles ------------------------------------------------------------------------------


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (self.marker,))


def test_raw_pickle_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "model.pt"
    path.write_bytes(pickle.dumps(_RunsCode(marker), protocol=2))
    with pytest.raises(InvalidModelError, match="pickle") as caught:
        inspect(path, tmp_path)
    assert "torch.export.save" in caught.value.message
    assert not marker.exists()


def test_torch_save_zip_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = write_zip(
        tmp_path / "model.pt",
        {"archive/data.pkl": pickle.dumps(_RunsCode(marker), protocol=2), "archive/version": b"3"},
    )
    with pytest.raises(InvalidModelError, match=r"torch\.save") as caught:
        inspect(path, tmp_path)
    assert "torch.jit.script" in caught.value.message
    assert not marker.exists()


def test_torch_state_dict_is_refused_with_export_advice(
    tmp_path: Path, torch_files: dict[str, Path]
) -> None:
    with pytest.raises(InvalidModelError, match="state dict") as caught:
        inspect(torch_files["state_dict"], tmp_path)
    assert "torch.export.export(model, example_inputs)" in caught.value.message


def test_unknown_file_is_not_an_onnx_model(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(InvalidModelError, match="not a valid ONNX model"):
        inspect(path, tmp_path)


# --- torch.export and TorchScript ---------------------------------------------------------


def test_pt2_is_described_from_its_json(tmp_path: Path, torch_files: dict[str, Path]) -> None:
    info = inspect(torch_files["pt2"], tmp_path)
    assert info.format == "torch_export"
    assert [t.name for t in info.inputs] == ["x"]
    assert info.inputs[0].dtype == "float32"
    assert isinstance(info.inputs[0].shape[0], str)
    assert info.inputs[0].shape[1] == IN_FEATURES
    assert [t.shape[1:] for t in info.outputs] == [[CLASSES]]
    assert info.parameter_count == IN_FEATURES * 16 + 16 + 16 * CLASSES + CLASSES
    assert info.size_bytes > 0


def _pt2_program(path: Path) -> tuple[str, dict]:
    with zipfile.ZipFile(path) as archive:
        name = next(n for n in archive.namelist() if n.endswith("models/model.json"))
        return name, json.loads(archive.read(name))


def test_pt2_with_code_in_a_shape_expression_is_refused(
    tmp_path: Path, torch_files: dict[str, Path]
) -> None:
    name, program = _pt2_program(torch_files["pt2"])
    marker = tmp_path / "pwned"
    text = json.dumps(program)
    evil = f"__import__('pathlib').Path('{marker}').touch()"
    assert "Symbol(" in text
    text = text.replace("Symbol(", evil.replace("'", "\\u0027") + " or Symbol(", 1)
    path = rewrite_zip(torch_files["pt2"], tmp_path / "evil.pt2", {name: text.encode()})
    with pytest.raises(UnsafeArchiveError, match="shape expression"):
        inspect(path, tmp_path)
    assert not marker.exists()


def test_pt2_with_code_in_a_guard_is_refused(tmp_path: Path, torch_files: dict[str, Path]) -> None:
    name, program = _pt2_program(torch_files["pt2"])
    program["guards_code"] = ["__import__('os').system('true') == 0"]
    path = rewrite_zip(
        torch_files["pt2"], tmp_path / "evil.pt2", {name: json.dumps(program).encode()}
    )
    with pytest.raises(UnsafeArchiveError, match="guard"):
        inspect(path, tmp_path)


def test_pt2_calling_a_non_operator_is_refused(
    tmp_path: Path, torch_files: dict[str, Path]
) -> None:
    name, program = _pt2_program(torch_files["pt2"])
    program["graph_module"]["graph"]["nodes"][0]["target"] = "torch.load"
    path = rewrite_zip(
        torch_files["pt2"], tmp_path / "evil.pt2", {name: json.dumps(program).encode()}
    )
    with pytest.raises(UnsafeArchiveError, match=r"torch\.load"):
        inspect(path, tmp_path)


def test_pt2_with_pickled_weights_is_refused(tmp_path: Path, torch_files: dict[str, Path]) -> None:
    with zipfile.ZipFile(torch_files["pt2"]) as archive:
        name = next(n for n in archive.namelist() if n.endswith("model_weights_config.json"))
        config = json.loads(archive.read(name))
    next(iter(config["config"].values()))["use_pickle"] = True
    path = rewrite_zip(
        torch_files["pt2"], tmp_path / "evil.pt2", {name: json.dumps(config).encode()}
    )
    with pytest.raises(UnsafeArchiveError, match="pickle"):
        inspect(path, tmp_path)


def test_torchscript_needs_input_shapes(tmp_path: Path, torch_files: dict[str, Path]) -> None:
    assert detect_format(torch_files["torchscript"], max_total_bytes=LIMIT).format == (
        UploadFormat.torchscript
    )
    with pytest.raises(InvalidModelError, match="'input_shapes'") as caught:
        inspect(torch_files["torchscript"], tmp_path)
    assert '{"x": ["batch", 16]}' in caught.value.message

    info = inspect(
        torch_files["torchscript"],
        tmp_path,
        input_shapes=json.dumps({"x": ["batch", IN_FEATURES]}),
    )
    assert info.format == "torchscript"
    assert [t.model_dump() for t in info.inputs] == [
        {"name": "x", "dtype": "float32", "shape": ["batch", IN_FEATURES]}
    ]


@pytest.mark.parametrize(
    ("shapes", "message"),
    [
        ({"y": [1, 8]}, "missing \\['x'\\]"),
        ({"x": [0, 8]}, "positive sizes"),
        ({"x": "batch"}, "positive sizes"),
    ],
)
def test_torchscript_input_shapes_are_validated(
    tmp_path: Path, torch_files: dict[str, Path], shapes: dict, message: str
) -> None:
    with pytest.raises(InvalidModelError, match=message):
        inspect(torch_files["torchscript"], tmp_path, input_shapes=json.dumps(shapes))


def test_input_shapes_are_refused_for_other_formats(
    tmp_path: Path, torch_files: dict[str, Path]
) -> None:
    with pytest.raises(InvalidModelError, match="only apply to TorchScript"):
        inspect(torch_files["pt2"], tmp_path, input_shapes='{"x": [1, 8]}')


# --- ONNX with external data --------------------------------------------------------------


def test_onnx_zip_is_described_without_its_data(tmp_path: Path) -> None:
    path = make_external_data_zip(tmp_path / "mlp.zip", tmp_path / "build")
    info = inspect(path, tmp_path)
    assert info.format == "onnx_zip"
    assert info.inputs[0].name == "x" and info.outputs[0].name == "logits"
    with zipfile.ZipFile(path) as archive:
        assert info.size_bytes == sum(i.file_size for i in archive.infolist())
    assert list((tmp_path / "tmp").iterdir()) == []


def test_onnx_zip_missing_its_data_file_is_refused(tmp_path: Path) -> None:
    make_external_data_zip(tmp_path / "full.zip", tmp_path / "build")
    path = write_zip(
        tmp_path / "m.zip", {"mlp.onnx": (tmp_path / "build" / "mlp.onnx").read_bytes()}
    )
    with pytest.raises(InvalidModelError, match=r"mlp\.onnx\.data"):
        inspect(path, tmp_path)


def _model_with_location(build: Path, location: str, *, offset: int = 0) -> bytes:
    model = onnx.load(str(build / "mlp.onnx"), load_external_data=False)
    for entry in model.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = location
        if entry.key == "offset":
            entry.value = str(offset)
    return model.SerializeToString()


@pytest.mark.parametrize("location", ["../mlp.onnx.data", "/etc/passwd"])
def test_onnx_zip_with_escaping_data_location_is_refused(tmp_path: Path, location: str) -> None:
    build = tmp_path / "build"
    make_external_data_zip(tmp_path / "full.zip", build)
    path = write_zip(
        tmp_path / "m.zip",
        {
            "mlp.onnx": _model_with_location(build, location),
            "mlp.onnx.data": (build / "mlp.onnx.data").read_bytes(),
        },
    )
    with pytest.raises(InvalidModelError, match="not allowed"):
        inspect(path, tmp_path)


def test_onnx_zip_with_data_past_the_end_is_refused(tmp_path: Path) -> None:
    build = tmp_path / "build"
    make_external_data_zip(tmp_path / "full.zip", build)
    path = write_zip(
        tmp_path / "m.zip",
        {
            "mlp.onnx": _model_with_location(build, "mlp.onnx.data", offset=1 << 30),
            "mlp.onnx.data": (build / "mlp.onnx.data").read_bytes(),
        },
    )
    with pytest.raises(InvalidModelError, match="is it complete"):
        inspect(path, tmp_path)


def test_extract_onnx_zip_writes_only_the_model_and_its_data(tmp_path: Path) -> None:
    import onnxruntime as ort

    source = make_external_data_zip(tmp_path / "mlp.zip", tmp_path / "build")
    with_extra = tmp_path / "extra.zip"
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(with_extra, "w") as new:
        for info in old.infolist():
            new.writestr(info, old.read(info))
        new.writestr("README.txt", "not needed")
    model_path = extract_onnx_zip(with_extra, tmp_path / "out", max_total_bytes=LIMIT)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["mlp.onnx", "mlp.onnx.data"]
    assert model_size_bytes(model_path) == sum(
        p.stat().st_size for p in (tmp_path / "out").iterdir()
    )
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"x": np.ones((2, 32), np.float32)})
    assert logits.shape == (2, 10)
