"""ONNX models as trainable torch modules and back: the round trip computes what the original
computes, and an op without a converter is refused by name."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from optimizers.errors import UnsupportedError
from tests.models.onnx_basic import make_cnn, make_mlp
from tests.models.torch_programs import encoder_classifier, export_encoder

pytest.importorskip("torch")


def _outputs(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


@pytest.mark.parametrize(
    ("make", "feed"),
    [
        (make_cnn, {"image": (5, 3, 16, 16)}),
        (make_mlp, {"x": (5, 16)}),
    ],
    ids=["cnn", "mlp"],
)
def test_round_trip_computes_the_same_outputs(
    tmp_path: Path, make: Callable[[Path], Path], feed: dict[str, tuple[int, ...]]
) -> None:
    from optimizers.model_info import inspect_model
    from optimizers.trainable.module_to_onnx import export_to_onnx
    from optimizers.trainable.onnx_to_module import onnx_to_torch

    original = make(tmp_path / "original.onnx")
    module = onnx_to_torch(original)
    exported = export_to_onnx(module, tmp_path / "exported.onnx", like=inspect_model(original))

    assert [t.name for t in exported.inputs] == list(feed)
    assert exported.inputs[0].shape[0] == "batch"  # the batch axis stays dynamic
    rng = np.random.default_rng(0)
    feeds = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in feed.items()}
    expected = _outputs(original, feeds)
    actual = _outputs(tmp_path / "exported.onnx", feeds)
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected, strict=True):
        np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-5)


def test_an_op_without_a_converter_is_refused_by_node_name(tmp_path: Path) -> None:
    from optimizers.trainable.onnx_to_module import onnx_to_torch

    graph = helper.make_graph(
        [
            helper.make_node("Relu", ["x"], ["r"], name="relu"),
            helper.make_node("Frobnicate", ["r"], ["y"], name="mystery", domain="com.example"),
        ],
        "custom",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)],
    )
    model.ir_version = 8
    path = tmp_path / "custom.onnx"
    onnx.save(model, str(path))

    with pytest.raises(UnsupportedError, match=r"'mystery'.*Frobnicate"):
        onnx_to_torch(path)


def test_weights_the_exporter_stored_once_under_two_names_convert(tmp_path: Path) -> None:
    import torch

    from optimizers.trainable.onnx_to_module import onnx_to_torch

    # Untrained batch norms fold into equal (zero) biases; the exporter keeps one of them and
    # aliases it with an Identity node.
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, bias=False),
        torch.nn.BatchNorm2d(4),
        torch.nn.Conv2d(4, 4, 3, bias=False),
        torch.nn.BatchNorm2d(4),
    ).eval()
    path = tmp_path / "aliased.onnx"
    torch.onnx.export(model, (torch.zeros(1, 1, 8, 8),), str(path), input_names=["x"], dynamo=False)
    assert "Identity" in {node.op_type for node in onnx.load(str(path)).graph.node}

    module = onnx_to_torch(path)

    x = np.random.default_rng(0).standard_normal((1, 1, 8, 8)).astype(np.float32)
    with torch.no_grad():
        actual = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(actual, _outputs(path, {"x": x})[0], rtol=1e-4, atol=1e-5)


def test_numeric_input_and_output_names_survive_the_round_trip(tmp_path: Path) -> None:
    from optimizers.model_info import inspect_model
    from optimizers.trainable.module_to_onnx import export_to_onnx
    from optimizers.trainable.onnx_to_module import onnx_to_torch

    # torch names the outputs of a model exported without names by number ('188'), a name
    # its own exporter then refuses to give.
    model = onnx.load(str(make_mlp(tmp_path / "named.onnx")))
    renames = {model.graph.input[0].name: "0", model.graph.output[0].name: "188"}
    for value in [*model.graph.input, *model.graph.output]:
        value.name = renames[value.name]
    for node in model.graph.node:
        node.input[:] = [renames.get(name, name) for name in node.input]
        node.output[:] = [renames.get(name, name) for name in node.output]
    original = tmp_path / "numbered.onnx"
    onnx.save(model, str(original))

    exported = export_to_onnx(
        onnx_to_torch(original), tmp_path / "exported.onnx", like=inspect_model(original)
    )

    assert [t.name for t in exported.inputs] == ["0"]
    assert [t.name for t in exported.outputs] == ["188"]
    feeds = {"0": np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)}
    np.testing.assert_allclose(
        _outputs(tmp_path / "exported.onnx", feeds)[0],
        _outputs(original, feeds)[0],
        rtol=1e-4,
        atol=1e-5,
    )


def test_round_trips_do_not_grow_the_graph(tmp_path: Path) -> None:
    from optimizers.model_info import inspect_model
    from optimizers.trainable.module_to_onnx import export_to_onnx
    from optimizers.trainable.onnx_to_module import onnx_to_torch

    # Each training pass converts and exports again; the shape arithmetic of attention is
    # where re-exported graphs pile up Identity and Cast nodes unless they are simplified.
    original = export_encoder(encoder_classifier(), tmp_path / "original.onnx")
    path = original
    for round_trip in range(3):
        target = tmp_path / f"round-{round_trip}.onnx"
        export_to_onnx(onnx_to_torch(path), target, like=inspect_model(path))
        path = target

    def nodes(model: Path) -> int:
        return len(onnx.load(str(model)).graph.node)

    counts = [nodes(tmp_path / f"round-{round_trip}.onnx") for round_trip in range(3)]
    assert counts[0] < nodes(original)
    assert counts == [counts[0]] * 3  # no growth from one round trip to the next
    feeds = {"x": np.random.default_rng(0).standard_normal((3, 5, 16)).astype(np.float32)}
    np.testing.assert_allclose(
        _outputs(path, feeds)[0], _outputs(original, feeds)[0], rtol=1e-4, atol=1e-5
    )
