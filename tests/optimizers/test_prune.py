"""The prune pass and the structured pruning it shares with distillation, on tiny torch models
exported to ONNX in fixtures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from optimizers.errors import OptimizerError
from tests.factories import make_mlp

torch = pytest.importorskip("torch")
nn = torch.nn

IN_FEATURES, CLASSES = 16, 4


def _export(module: Any, path: Path, example: Any, input_name: str = "x") -> Path:
    module.eval()
    torch.onnx.export(
        module,
        (example,),
        str(path),
        input_names=[input_name],
        output_names=["logits"],
        dynamic_axes={input_name: {0: "batch"}, "logits": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    return path


class SmallCnn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, CLASSES)

    def forward(self, x: Any) -> Any:
        x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = torch.relu(self.conv2(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def _mlp(hidden: int = 32) -> Any:
    return nn.Sequential(
        nn.Linear(IN_FEATURES, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, CLASSES),
    )


@pytest.fixture(scope="module")
def cnn(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return _export(
        SmallCnn(), tmp_path_factory.mktemp("prune") / "cnn.onnx", torch.randn(2, 3, 8, 8)
    )


@pytest.fixture(scope="module")
def mlp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return _export(
        _mlp(), tmp_path_factory.mktemp("prune") / "mlp.onnx", torch.randn(2, IN_FEATURES)
    )


def _node_of(path: Path, op_type: str, index: int = 0) -> str:
    return [node.name for node in onnx.load(str(path)).graph.node if node.op_type == op_type][index]


# --- structured.shrink ---------------------------------------------------------------------


def test_shrink_removes_channels_and_keeps_the_output_shape(cnn: Path) -> None:
    from optimizers import structured
    from optimizers.torch_bridge import onnx_to_torch

    module = onnx_to_torch(cnn)
    example = (torch.randn(2, 3, 8, 8),)
    before = structured.layer_widths(module)
    (output,) = structured.output_layers(module)
    assert isinstance(output, nn.Linear) and output.out_features == CLASSES

    counts = structured.shrink(module, example, ratio=0.5, keep=[])

    after = structured.layer_widths(module)
    assert counts["parameters_after"] < counts["parameters_before"]
    assert counts["macs_after"] < counts["macs_before"]
    assert module(*example).shape == (2, CLASSES)
    # the convs are halved; the output layer keeps its width
    fc = next(name for name, layer in module.named_modules() if layer is output)
    assert after == {name: CLASSES if name == fc else 4 for name in before}
    assert before == {name: CLASSES if name == fc else 8 for name in before}


def test_shrink_keeps_the_width_of_kept_layers_and_is_deterministic(cnn: Path) -> None:
    from optimizers import structured
    from optimizers.torch_bridge import module_names_by_node, onnx_to_torch

    first_conv = _node_of(cnn, "Conv")
    results = []
    for _ in range(2):
        module = onnx_to_torch(cnn)
        keep = structured.layers_for_nodes(module, module_names_by_node(cnn), [first_conv])
        structured.shrink(module, (torch.randn(2, 3, 8, 8),), ratio=0.5, importance="l1", keep=keep)
        assert keep[0].out_channels == 8
        results.append({k: v.clone() for k, v in module.state_dict().items()})
    assert results[0].keys() == results[1].keys()
    assert all(torch.equal(results[0][k], results[1][k]) for k in results[0])


def test_unknown_layer_names_are_refused_with_the_valid_ones(cnn: Path) -> None:
    from optimizers import structured
    from optimizers.torch_bridge import module_names_by_node, onnx_to_torch

    module = onnx_to_torch(cnn)
    with pytest.raises(OptimizerError, match="no node called 'nope'") as info:
        structured.layers_for_nodes(module, module_names_by_node(cnn), ["nope"])
    assert _node_of(cnn, "Conv") in str(info.value)


def test_linearize_makes_onnx_matmul_layers_prunable(tmp_path: Path) -> None:
    from optimizers import structured
    from optimizers.torch_bridge import onnx_to_torch

    path = make_mlp(tmp_path / "matmul.onnx", hidden=16)  # MatMul + Add with constant weights
    module = onnx_to_torch(path)
    x = torch.randn(3, 16)
    expected = module(x)

    aliases = structured.linearize(module)

    assert aliases == {"fc1_bias": "fc1", "fc2_bias": "fc2", "fc3_bias": "fc3"}
    assert torch.allclose(module(x), expected, atol=1e-5)
    assert not list(module.buffers())  # the weights are trainable parameters now
    structured.shrink(module, (x,), ratio=0.25, keep=[])
    assert structured.layer_widths(module) == {"fc1": 12, "fc2": 12, "fc3": 4}


def test_a_model_with_nothing_to_prune_is_refused(tmp_path: Path) -> None:
    from optimizers import structured
    from optimizers.errors import UnsupportedError
    from optimizers.torch_bridge import onnx_to_torch

    torch.manual_seed(0)
    path = _export(nn.Linear(IN_FEATURES, CLASSES), tmp_path / "linear.onnx", torch.randn(2, 16))
    module = onnx_to_torch(path)
    with pytest.raises(UnsupportedError, match="no channel"):
        structured.shrink(module, (torch.randn(2, 16),), ratio=0.5, keep=[])


def _initializers(path: Path) -> dict[str, np.ndarray]:
    return {
        init.name: numpy_helper.to_array(init) for init in onnx.load(str(path)).graph.initializer
    }
