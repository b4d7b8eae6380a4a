"""PyTorch programs converted to ONNX in the worker give the same outputs as in torch."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from optimizers.errors import InvalidModelError
from optimizers.formats.archive_safety import UnsafeArchiveError
from optimizers.formats.torch_to_onnx import convert_to_onnx
from optimizers.formats.upload import inspect_upload
from optimizers.results import ModelInfo
from tests.models.torch_programs import (
    CLASSES,
    IN_FEATURES,
    rewrite_zip,
    save_pt2,
    save_torchscript,
    tiny_module,
)

LIMIT = 64 << 20


def describe(path: Path, tmp_path: Path, **fields: str) -> ModelInfo:
    return inspect_upload(path, max_total_bytes=LIMIT, fields=fields, tmp_dir=tmp_path)


def torch_and_onnx_outputs(onnx_path: Path, batch: int) -> tuple[np.ndarray, np.ndarray]:
    import torch

    x = np.random.default_rng(1).standard_normal((batch, IN_FEATURES)).astype(np.float32)
    with torch.no_grad():
        expected = tiny_module()(torch.from_numpy(x)).numpy()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (actual,) = session.run(None, {session.get_inputs()[0].name: x})
    return expected, actual


def test_pt2_converts_to_an_equivalent_onnx_model(tmp_path: Path) -> None:
    path = save_pt2(tmp_path / "tiny.pt2")
    conversion = convert_to_onnx(
        path, describe(path, tmp_path), tmp_path / "out", max_total_bytes=LIMIT
    )
    # A batch size other than the one used at export: the batch axis stays dynamic.
    expected, actual = torch_and_onnx_outputs(conversion.model_path, batch=7)
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5)
    source = conversion.source
    assert source["format"] == "torch_export" and source["converted"] is True
    assert "dynamo=True" in source["exporter"]
    assert source["opset"] == 18
    assert [t["name"] for t in source["inputs"]] == ["x"]
    assert isinstance(source["inputs"][0]["shape"][0], str)
    assert source["outputs"][0]["shape"][1:] == [CLASSES]
    assert "baseline" in conversion.notes[0]


def test_torchscript_converts_with_the_given_shapes(tmp_path: Path) -> None:
    path = save_torchscript(tmp_path / "tiny.pt")
    info = describe(path, tmp_path, input_shapes=json.dumps({"x": ["batch", IN_FEATURES]}))
    conversion = convert_to_onnx(path, info, tmp_path / "out", max_total_bytes=LIMIT)
    expected, actual = torch_and_onnx_outputs(conversion.model_path, batch=5)
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5)
    assert conversion.source["format"] == "torchscript"
    assert conversion.source["inputs"] == [
        {"name": "x", "dtype": "float32", "shape": ["batch", IN_FEATURES]}
    ]
    assert conversion.source["outputs"][0]["shape"] == ["batch", CLASSES]


def test_torchscript_with_wrong_shapes_fails_with_a_reason(tmp_path: Path) -> None:
    path = save_torchscript(tmp_path / "tiny.pt")
    info = describe(path, tmp_path, input_shapes=json.dumps({"x": ["batch", IN_FEATURES + 1]}))
    with pytest.raises(InvalidModelError, match="example inputs of the shapes given at upload"):
        convert_to_onnx(path, info, tmp_path / "out", max_total_bytes=LIMIT)


def test_torchscript_that_torch_cannot_export_points_to_pt2(tmp_path: Path) -> None:
    import torch

    # torch's exporter sees no tensor ranks in a loaded TorchScript archive, and the way
    # MultiheadAttention splits its fused projection needs them.
    layer = torch.nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True).eval()
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        path = tmp_path / "encoder.pt"
        torch.jit.trace(layer, torch.randn(2, 5, 16)).save(str(path))
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    info = describe(path, tmp_path, input_shapes=json.dumps({"src": ["batch", 5, 16]}))
    with pytest.raises(InvalidModelError, match=r"could not be converted.*\.pt2 program"):
        convert_to_onnx(path, info, tmp_path / "out", max_total_bytes=LIMIT)


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (self.marker,))


def test_pt2_sample_inputs_that_are_not_tensors_are_never_unpickled(tmp_path: Path) -> None:
    import torch

    path = save_pt2(tmp_path / "tiny.pt2")
    info = describe(path, tmp_path)
    marker = tmp_path / "pwned"
    evil = io.BytesIO()
    torch.save(((_RunsCode(marker),), {}), evil)
    with zipfile.ZipFile(path) as archive:
        name = next(n for n in archive.namelist() if n.endswith("sample_inputs/model.pt"))
    tampered = rewrite_zip(path, tmp_path / "evil.pt2", {name: evil.getvalue()})
    with pytest.raises(UnsafeArchiveError, match="weights_only=True"):
        convert_to_onnx(tampered, info, tmp_path / "out", max_total_bytes=LIMIT)
    assert not marker.exists()
