from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from onnx import helper

from optimizers.errors import InvalidModelError
from optimizers.model_info import inspect_model
from tests.models.onnx_basic import make_cnn, make_mlp
from tests.models.sequences import make_sequence_model


def test_describes_a_valid_model(tmp_path: Path) -> None:
    path = make_mlp(tmp_path / "m.onnx", in_features=16, hidden=32, classes=4)
    info = inspect_model(path)
    assert info.format == "onnx"
    assert info.opset == 17
    assert info.ir_version == 8
    assert info.producer == "modelpress-tests"
    assert [(t.name, t.dtype, t.shape) for t in info.inputs] == [("x", "float32", ["N", 16])]
    assert [(t.name, t.dtype, t.shape) for t in info.outputs] == [("logits", "float32", ["N", 4])]
    assert info.parameter_count == 16 * 32 + 32 + 32 * 32 + 32 + 32 * 4 + 4
    assert info.size_bytes == path.stat().st_size


def test_reports_fixed_and_symbolic_dims(tmp_path: Path) -> None:
    fixed = inspect_model(make_cnn(tmp_path / "cnn.onnx", batch=1, size=8))
    assert fixed.inputs[0].shape == [1, 3, 8, 8]
    seq = inspect_model(make_sequence_model(tmp_path / "seq.onnx"))
    assert seq.inputs[0].shape == ["N", "seq", 8]
    # The ReduceMean axes initializer is not an input the caller feeds.
    assert [t.name for t in seq.inputs] == ["x"]


def test_initializers_listed_as_inputs_are_not_inputs(tmp_path: Path) -> None:
    path = make_mlp(tmp_path / "m.onnx", hidden=8)
    model = onnx.load(str(path))
    for init in model.graph.initializer:
        model.graph.input.append(
            helper.make_tensor_value_info(init.name, init.data_type, list(init.dims))
        )
    onnx.save(model, str(path))
    assert [t.name for t in inspect_model(path).inputs] == ["x"]


def test_garbage_file_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "garbage.onnx"
    path.write_bytes(b"this is not a model at all \x00\xff\x13" * 20)
    with pytest.raises(InvalidModelError) as exc:
        inspect_model(path)
    assert exc.value.type == "invalid_model"


def test_truncated_model_is_rejected(tmp_path: Path) -> None:
    path = make_mlp(tmp_path / "m.onnx", hidden=64)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidModelError):
        inspect_model(path)


def test_missing_file_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(InvalidModelError, match="cannot read"):
        inspect_model(tmp_path / "nope.onnx")


def test_checker_errors_are_reported(tmp_path: Path) -> None:
    path = make_mlp(tmp_path / "m.onnx", hidden=8)
    model = onnx.load(str(path))
    model.graph.node[0].input[1] = "does_not_exist"
    onnx.save(model, str(path))
    with pytest.raises(InvalidModelError, match="checker"):
        inspect_model(path)
