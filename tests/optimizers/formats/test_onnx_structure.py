"""The streamed structure copy that ONNX uploads are checked from: broken, oversized and
deeply nested protobufs are refused with a reason, and the copy never carries the weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizers.errors import InvalidModelError
from optimizers.external_data import external_data_locations
from optimizers.formats.onnx_structure import MAX_GRAPH_DEPTH, MAX_STRUCTURE_BYTES, slim_copy
from optimizers.formats.upload import inspect_upload
from tests.models.onnx_basic import make_mlp


def _inspect(path: Path, tmp_path: Path) -> object:
    return inspect_upload(path, max_total_bytes=1 << 32, fields={}, tmp_dir=tmp_path / "t")


def _matmul_model(weight: onnx.TensorProto) -> onnx.ModelProto:
    rows, columns = weight.dims
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", weight.name], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", rows])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", columns])],
        initializer=[weight],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_the_copy_keeps_the_graph_and_leaves_the_weights_in_place(tmp_path: Path) -> None:
    path = make_mlp(tmp_path / "m.onnx", in_features=64, hidden=256, classes=10)
    structure = slim_copy(path, tmp_path / "copy")
    assert structure.relocated_tensors >= 2
    assert structure.path.stat().st_size < path.stat().st_size // 10
    copy = onnx.load(str(structure.path), load_external_data=False)
    original = onnx.load(str(path))
    assert [n.op_type for n in copy.graph.node] == [n.op_type for n in original.graph.node]
    stand_in = tmp_path / "copy" / structure.data_location
    assert stand_in.stat().st_size == path.stat().st_size
    assert stand_in.stat().st_blocks == 0  # sparse: no weight byte was written
    for tensors in external_data_locations(copy).values():
        for entry in tensors:
            weight = numpy_helper.to_array(
                next(t for t in original.graph.initializer if t.name == entry.tensor)
            )
            with path.open("rb") as handle:
                handle.seek(entry.offset)
                assert handle.read(entry.length) == weight.tobytes()


def test_a_cut_off_model_is_refused(tmp_path: Path) -> None:
    whole = make_mlp(tmp_path / "m.onnx", in_features=64, hidden=256).read_bytes()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(
        InvalidModelError, match=r"not a valid ONNX model: .*(cut off|past its end)"
    ):
        _inspect(cut, tmp_path)


def test_a_graph_too_large_to_hold_is_refused(tmp_path: Path) -> None:
    rows = MAX_STRUCTURE_BYTES // (4 * 64) + 64
    # float_data instead of raw_data: the values are part of the structure.
    weight = helper.make_tensor(
        "W", TensorProto.FLOAT, [rows, 64], np.zeros(rows * 64, np.float32).tolist()
    )
    path = tmp_path / "floats.onnx"
    onnx.save(_matmul_model(weight), str(path))
    with pytest.raises(InvalidModelError, match=r"larger than 16 MiB.*raw_data"):
        _inspect(path, tmp_path)


def test_subgraphs_nested_too_deep_are_refused(tmp_path: Path) -> None:
    cond = helper.make_tensor("cond", TensorProto.BOOL, [], [True])
    body = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "leaf",
        [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N"])],
    )
    leaf = body
    for level in range(MAX_GRAPH_DEPTH):
        # One branch nests further, the other is a leaf: the model grows linearly.
        node = helper.make_node("If", ["cond"], ["y"], then_branch=body, else_branch=leaf)
        body = helper.make_graph(
            [node],
            f"level{level}",
            [],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N"])],
        )
    graph = helper.make_graph(
        list(body.node),
        "top",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N"])],
        initializer=[cond],
    )
    path = tmp_path / "deep.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(InvalidModelError, match="nests graphs more than 16 deep"):
        _inspect(path, tmp_path)


def test_a_file_that_is_not_protobuf_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "text.onnx"
    path.write_bytes(b"\xff" * 64)
    with pytest.raises(InvalidModelError, match="not a valid ONNX model"):
        _inspect(path, tmp_path)
