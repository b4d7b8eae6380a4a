"""Upload checks of optimizers.formats.upload and optimizers.model_info that the API relies
on: custom operator domains anywhere in a model, TorchScript pickles, bounded input shapes."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from optimizers.errors import InvalidModelError, UnsupportedError
from optimizers.formats.archive_safety import UnsafeArchiveError
from optimizers.formats.torchscript_archive import check_torchscript_pickles
from optimizers.formats.upload import inspect_upload
from optimizers.model_info import inspect_model


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def _io(name: str) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", 4])


def _if_model(inner: onnx.NodeProto, domains: list[tuple[str, int]]) -> onnx.ModelProto:
    """x -> If(cond) with `inner` as the body of both branches."""
    branch = helper.make_graph([inner], "branch", [], [_io("y")])
    cond = helper.make_tensor("cond", TensorProto.BOOL, [], [True])
    node = helper.make_node(
        "If", ["cond"], ["y"], name="gate", then_branch=branch, else_branch=branch
    )
    graph = helper.make_graph([node], "g", [_io("x")], [_io("y")], initializer=[cond])
    opsets = [helper.make_opsetid(domain, version) for domain, version in domains]
    return helper.make_model(graph, opset_imports=opsets)


def test_custom_domain_inside_a_subgraph_is_refused(tmp_path: Path) -> None:
    inner = helper.make_node("Hidden", ["x"], ["y"], name="deep_node", domain="com.example")
    path = _save(_if_model(inner, [("", 17), ("com.example", 1)]), tmp_path / "m.onnx")
    with pytest.raises(UnsupportedError, match=r"'deep_node' \(in a subgraph of node 'gate'\)"):
        inspect_model(path, check_domains=True)


def test_standard_and_onnxruntime_domains_are_accepted(tmp_path: Path) -> None:
    # com.microsoft: onnxruntime's built-in contrib ops, as in the quantized models that
    # modelpress itself produces.
    gelu = helper.make_node("Gelu", ["x"], ["y"], name="gelu", domain="com.microsoft")
    graph = helper.make_graph([gelu], "g", [_io("x")], [_io("y")])
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    info = inspect_model(_save(model, tmp_path / "m.onnx"), check_domains=True)
    assert [t.name for t in info.inputs] == ["x"]


def test_model_local_function_is_accepted_but_its_body_is_checked(tmp_path: Path) -> None:
    def model_with_body(body_domain: str) -> onnx.ModelProto:
        body = helper.make_node(
            "Relu" if not body_domain else "Evil", ["a"], ["b"], domain=body_domain
        )
        body_opsets = [helper.make_opsetid("", 17)]
        if body_domain:
            body_opsets.append(helper.make_opsetid(body_domain, 1))
        function = helper.make_function(
            "pkg.local", "MyBlock", ["a"], ["b"], [body], opset_imports=body_opsets
        )
        call = helper.make_node("MyBlock", ["x"], ["y"], name="block", domain="pkg.local")
        graph = helper.make_graph([call], "g", [_io("x")], [_io("y")])
        opsets = [*body_opsets, helper.make_opsetid("pkg.local", 1)]
        return helper.make_model(graph, opset_imports=opsets, functions=[function])

    accepted = inspect_model(_save(model_with_body(""), tmp_path / "ok.onnx"), check_domains=True)
    assert accepted.outputs[0].name == "y"
    refused = _save(model_with_body("com.example"), tmp_path / "bad.onnx")
    with pytest.raises(UnsupportedError, match=r"function 'pkg.local.MyBlock'.*'com.example'"):
        inspect_model(refused, check_domains=True)


def test_real_torchscript_archive_passes_the_pickle_check(tmp_path: Path) -> None:
    from tests.models.torch_programs import save_torchscript

    path = save_torchscript(tmp_path / "tiny.pt")
    with zipfile.ZipFile(path) as archive:
        check_torchscript_pickles(archive)  # no false alarm on what torch.jit.save writes


@pytest.mark.parametrize(
    "pickle_bytes",
    [
        b"cbuiltins\neval\n(S'1'\ntR.",  # GLOBAL
        b"\x80\x04\x8c\x02os\x8c\x06system\x93.",  # STACK_GLOBAL
        b"(S'sh'\nipty\nspawn\n.",  # INST
    ],
)
def test_torchscript_pickle_naming_a_foreign_callable_is_refused(pickle_bytes: bytes) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("m/constants.pkl", pickle_bytes)
    with zipfile.ZipFile(buffer) as archive, pytest.raises(UnsafeArchiveError, match="never"):
        check_torchscript_pickles(archive)


def test_torchscript_input_shapes_are_bounded(tmp_path: Path) -> None:
    from tests.models.torch_programs import save_torchscript

    path = save_torchscript(tmp_path / "tiny.pt")
    huge = '{"x": ["batch", 1048576, 1048576, 1048576]}'
    with pytest.raises(InvalidModelError, match="at most"):
        inspect_upload(
            path, max_total_bytes=1 << 30, fields={"input_shapes": huge}, tmp_dir=tmp_path
        )
