"""The prune pass and the structured pruning it shares with distillation, on tiny torch models
exported to ONNX in fixtures."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from optimizers.errors import OptimizerError
from tests.models.onnx_basic import make_mlp
from tests.models.torch_programs import encoder_classifier, export_encoder

torch = pytest.importorskip("torch")
nn = torch.nn


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    # Tiny models: with several busy processes on few cores, intra-op threads waiting on each
    # other make every training step take seconds instead of milliseconds.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
    from optimizers.trainable import structured
    from optimizers.trainable.onnx_to_module import onnx_to_torch

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
    from optimizers.trainable import structured
    from optimizers.trainable.onnx_to_module import module_names_by_node, onnx_to_torch

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
    from optimizers.trainable import structured
    from optimizers.trainable.onnx_to_module import module_names_by_node, onnx_to_torch

    module = onnx_to_torch(cnn)
    with pytest.raises(OptimizerError, match="no node called 'nope'") as info:
        structured.layers_for_nodes(module, module_names_by_node(cnn), ["nope"])
    assert _node_of(cnn, "Conv") in str(info.value)


def test_linearize_makes_onnx_matmul_layers_prunable(tmp_path: Path) -> None:
    from optimizers.trainable import structured
    from optimizers.trainable.onnx_to_module import onnx_to_torch

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
    from optimizers.errors import UnsupportedError
    from optimizers.trainable import structured
    from optimizers.trainable.onnx_to_module import onnx_to_torch

    torch.manual_seed(0)
    path = _export(nn.Linear(IN_FEATURES, CLASSES), tmp_path / "linear.onnx", torch.randn(2, 16))
    module = onnx_to_torch(path)
    with pytest.raises(UnsupportedError, match="no channel"):
        structured.shrink(module, (torch.randn(2, 16),), ratio=0.5, keep=[])


def _initializers(path: Path) -> dict[str, np.ndarray]:
    return {
        init.name: numpy_helper.to_array(init) for init in onnx.load(str(path)).graph.initializer
    }


# --- the prune pass ------------------------------------------------------------------------


def _ctx(tmp_path: Path, device: str = "cpu", **datasets: Path) -> Any:
    from optimizers.results import PassContext

    workdir = tmp_path / "work"
    workdir.mkdir(exist_ok=True)
    return PassContext(workdir=workdir, datasets=datasets, device=device)


def _weights(path: Path) -> list[tuple[str, np.ndarray, bool]]:
    """(node name, weight, produces a graph output) of every Gemm/Conv node, in graph order."""
    model = onnx.load(str(path))
    inits = _initializers(path)
    outputs = {value.name for value in model.graph.output}
    return [
        (node.name, inits[node.input[1]], node.output[0] in outputs)
        for node in model.graph.node
        if node.op_type in ("Gemm", "Conv", "MatMul") and node.input[1] in inits
    ]


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


@pytest.mark.parametrize("granularity", ["global", "layer"])
def test_magnitude_reaches_the_target_sparsity(mlp: Path, tmp_path: Path, granularity: str) -> None:
    from optimizers.config import PruneConfig
    from optimizers.registry import run_pass

    config = PruneConfig(method="magnitude", sparsity=0.6, granularity=granularity)
    result = run_pass(mlp, config, _ctx(tmp_path))

    pruned = [(name, w) for name, w, is_output in _weights(result.model_path) if not is_output]
    assert len(pruned) == 2
    zeros = sum(int((w == 0).sum()) for _, w in pruned)
    total = sum(w.size for _, w in pruned)
    assert zeros / total == pytest.approx(0.6, abs=1e-3)
    if granularity == "layer":
        assert all((w == 0).mean() == pytest.approx(0.6, abs=0.01) for _, w in pruned)
    details = result.details
    assert details["sparsity"] == pytest.approx(0.6, abs=1e-3)
    assert set(details["kept_layers"].values()) == {"output layer"}
    sizes = details["size_bytes"]
    assert sizes["output_compressed"] < sizes["output"]
    assert sizes["output_compressed"] < sizes["input_compressed"]
    assert any("not make it faster" in note for note in result.notes)
    assert _run(result.model_path, np.ones((3, IN_FEATURES), np.float32)).shape == (3, CLASSES)


def test_structured_makes_the_model_smaller_and_keeps_excluded_widths(
    cnn: Path, tmp_path: Path
) -> None:
    from optimizers.config import PruneConfig
    from optimizers.model_info import inspect_model
    from optimizers.registry import run_pass

    first_conv = _node_of(cnn, "Conv")
    config = PruneConfig(method="structured", ratio=0.5, exclude_layers=[first_conv])
    result = run_pass(cnn, config, _ctx(tmp_path))

    assert inspect_model(result.model_path).parameter_count < inspect_model(cnn).parameter_count
    widths = [w.shape[0] for _, w, _ in _weights(result.model_path)]
    assert widths == [8, 4, CLASSES]  # excluded conv, pruned conv, output layer
    assert result.details["layers"] == {_node_of(cnn, "Conv", 1): {"before": 8, "after": 4}}
    assert result.details["parameters_after"] < result.details["parameters_before"]
    x = np.random.default_rng(0).standard_normal((3, 3, 8, 8)).astype(np.float32)
    assert _run(result.model_path, x).shape == (3, CLASSES)


def _without_heads(
    model: Any, output_projection: str, heads: int, removed: tuple[int, ...], x: np.ndarray
) -> np.ndarray:
    """What `model` computes with the `removed` heads' share of its output projection (the
    submodule `output_projection`) zeroed: what a model with those heads pruned must
    compute."""
    masked = copy.deepcopy(model)
    weight = masked.get_submodule(output_projection).weight
    head_dim = weight.shape[1] // heads
    with torch.no_grad():
        for head in removed:
            weight[:, head * head_dim : (head + 1) * head_dim] = 0.0
        return masked(torch.from_numpy(x)).numpy()


def _pairs(heads: int) -> list[tuple[int, int]]:
    return [(a, b) for a in range(heads) for b in range(a + 1, heads)]


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class _HandWrittenAttention(torch.nn.Module):
    """Separate query/key/value projections viewed as [batch, seq, 4 heads, 8], as most
    hand-written transformers do, on [batch, 6, 32]. `rotary`: Llama-style, bias-free
    projections and rotary embeddings on queries and keys. `feed_forward`: a GELU
    feed-forward (an opset 20 Gelu from torch's default exporter)."""

    def __init__(self, *, rotary: bool = False, feed_forward: bool = False) -> None:
        super().__init__()
        self.rotary = rotary
        self.q, self.k, self.v, self.o = (
            torch.nn.Linear(32, 32, bias=not rotary) for _ in range(4)
        )
        if rotary:
            frequencies = torch.outer(
                torch.arange(6).float(), 1.0 / 10000 ** (torch.arange(0, 8, 2).float() / 8)
            )
            angles = torch.cat((frequencies, frequencies), dim=-1)
            self.register_buffer("cos", angles.cos()[None, None])
            self.register_buffer("sin", angles.sin()[None, None])
        self.ff = (
            torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 32))
            if feed_forward
            else None
        )
        self.head = torch.nn.Linear(32, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, _ = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, seq, 4, -1).transpose(1, 2)

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        if self.rotary:
            q = q * self.cos + _rotate_half(q) * self.sin
            k = k * self.cos + _rotate_half(k) * self.sin
        weights = torch.softmax(q @ k.transpose(-1, -2) / 8**0.5, dim=-1)
        x = x + self.o((weights @ v).transpose(1, 2).reshape(batch, seq, 32))
        if self.ff is not None:
            x = x + self.ff(x)
        return self.head(x.mean(dim=1))


def test_structured_on_a_transformer_removes_whole_attention_heads(tmp_path: Path) -> None:
    from optimizers.config import PruneConfig
    from optimizers.model_info import inspect_model
    from optimizers.registry import run_pass

    encoder = encoder_classifier(heads=4)
    path = export_encoder(encoder, tmp_path / "encoder.onnx")
    feed_forward = next(name for name, _, _ in _weights(path) if "linear1" in name)
    config = PruneConfig(method="structured", ratio=0.5, exclude_layers=[feed_forward])

    result = run_pass(path, config, _ctx(tmp_path))

    # Two of the four heads are gone: the fused query/key/value projection goes from 48 to
    # 24 outputs (the feed-forward layer was excluded, so that only heads change).
    (block,) = result.details["attention_heads"].values()
    assert block == {"before": 4, "after": 2}
    assert [change["after"] for change in result.details["layers"].values()] == [24]
    assert any("lost whole heads" in note for note in result.notes)
    assert "left_whole" not in result.details or not any(
        "self_attn" in name for name in result.details["left_whole"]
    )
    assert inspect_model(result.model_path).parameter_count < inspect_model(path).parameter_count
    # Before fine-tuning, the pruned model computes exactly what the original does without
    # two of its heads, at a batch size other than the one it was traced with.
    x = np.random.default_rng(0).standard_normal((6, 5, 16)).astype(np.float32)
    got = _run(result.model_path, x)
    out_projection = "encoder.layers.0.self_attn.out_proj"
    assert any(
        np.allclose(got, _without_heads(encoder, out_projection, 4, pair, x), atol=1e-4)
        for pair in _pairs(4)
    )
    assert not np.allclose(got, encoder(torch.from_numpy(x)).detach().numpy(), atol=1e-4)


def test_structured_keeps_the_heads_of_an_excluded_attention_block(tmp_path: Path) -> None:
    from optimizers.config import PruneConfig
    from optimizers.registry import run_pass

    path = export_encoder(encoder_classifier(), tmp_path / "encoder.onnx")
    in_projection = next(
        name for name, _, _ in _weights(path) if "self_attn" in name and "MatMul" in name
    )
    config = PruneConfig(method="structured", ratio=0.5, exclude_layers=[in_projection])

    result = run_pass(path, config, _ctx(tmp_path))

    # The attention block keeps its heads; its output projection, split from the heads by
    # Reshape ops, keeps its width and says so; the feed-forward units are still halved.
    assert "attention_heads" not in result.details
    assert [change["after"] for change in result.details["layers"].values()] == [16]
    assert any("linear1" in name for name in result.details["layers"])
    assert any("self_attn" in name for name in result.details["left_whole"])
    assert any("kept their width because removing" in note for note in result.notes)
    x = np.random.default_rng(0).standard_normal((4, 5, 16)).astype(np.float32)
    assert _run(result.model_path, x).shape == (4, 3)


def test_structured_removes_heads_of_separate_projections_from_torchs_default_exporter(
    tmp_path: Path,
) -> None:
    from optimizers.config import PruneConfig
    from optimizers.registry import run_pass

    torch.manual_seed(0)
    model = _HandWrittenAttention(feed_forward=True).eval()
    path = tmp_path / "attention.onnx"
    torch.onnx.export(
        model,
        (torch.randn(2, 6, 32),),
        str(path),
        input_names=["x"],
        output_names=["logits"],
        dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
        dynamo=True,
    )
    assert any(node.op_type == "Gelu" for node in onnx.load(str(path)).graph.node)

    result = run_pass(path, PruneConfig(method="structured", ratio=0.5), _ctx(tmp_path))

    (block,) = result.details["attention_heads"].values()
    assert block == {"before": 4, "after": 2}
    # query, key and value 32 -> 16; the feed-forward 64 -> 32
    assert sorted(change["after"] for change in result.details["layers"].values()) == [
        16,
        16,
        16,
        32,
    ]
    x = np.random.default_rng(0).standard_normal((3, 6, 32)).astype(np.float32)
    assert _run(result.model_path, x).shape == (3, CLASSES)


def test_structured_removes_heads_of_attention_with_rotary_position_embeddings(
    tmp_path: Path,
) -> None:
    from optimizers.config import PruneConfig
    from optimizers.registry import run_pass

    torch.manual_seed(0)
    model = _HandWrittenAttention(rotary=True).eval()
    path = _export(model, tmp_path / "rotary.onnx", torch.randn(2, 6, 32))

    result = run_pass(path, PruneConfig(method="structured", ratio=0.5), _ctx(tmp_path))

    (block,) = result.details["attention_heads"].values()
    assert block == {"before": 4, "after": 2}
    assert [change["after"] for change in result.details["layers"].values()] == [16, 16, 16]
    # It computes what the original computes without two of its heads.
    x = np.random.default_rng(0).standard_normal((3, 6, 32)).astype(np.float32)
    got = _run(result.model_path, x)
    assert any(
        np.allclose(got, _without_heads(model, "o", 4, pair, x), atol=1e-4) for pair in _pairs(4)
    )


def test_structured_removes_heads_from_a_pt2_upload(tmp_path: Path) -> None:
    from optimizers.config import PruneConfig
    from optimizers.formats.torch_to_onnx import convert_to_onnx
    from optimizers.formats.upload import inspect_upload
    from optimizers.registry import run_pass

    # A .pt2 program is converted with torch's default exporter, which writes attention
    # with other Reshapes than the TorchScript one (here with head size == head count).
    encoder = encoder_classifier(heads=4)
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(
        encoder, (torch.randn(4, 5, 16),), dynamic_shapes={"x": {0: batch}}
    )
    upload = tmp_path / "encoder.pt2"
    torch.export.save(program, str(upload))
    info = inspect_upload(upload, max_total_bytes=10**8, fields={}, tmp_dir=tmp_path)
    converted = convert_to_onnx(upload, info, tmp_path / "converted", max_total_bytes=10**8)

    result = run_pass(
        converted.model_path, PruneConfig(method="structured", ratio=0.5), _ctx(tmp_path)
    )

    (block,) = result.details["attention_heads"].values()
    assert block == {"before": 4, "after": 2}
    x = np.random.default_rng(0).standard_normal((3, 5, 16)).astype(np.float32)
    assert _run(result.model_path, x).shape == (3, 3)


def test_structured_on_a_model_from_torchs_default_exporter(tmp_path: Path) -> None:
    import torch

    from optimizers.config import PruneConfig
    from optimizers.registry import run_pass

    # Opset 18+, ReduceMean with axes as an input, a flatten written as a Reshape to a
    # constant [-1, 16] with allowzero=1: the conv feeding it must keep its width.
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(16, CLASSES),
    ).eval()
    path = tmp_path / "dynamo.onnx"
    torch.onnx.export(
        model,
        (torch.randn(2, 3, 8, 8),),
        str(path),
        input_names=["image"],
        output_names=["logits"],
        dynamic_shapes={"input": {0: torch.export.Dim("batch")}},
        dynamo=True,
    )
    assert onnx.load(str(path)).opset_import[0].version >= 18

    result = run_pass(path, PruneConfig(method="structured", ratio=0.5), _ctx(tmp_path))

    assert [change["after"] for change in result.details["layers"].values()] == [4]
    assert len(result.details["left_whole"]) == 1
    assert any("constant Reshape shape" in note for note in result.notes)
    x = np.random.default_rng(0).standard_normal((3, 3, 8, 8)).astype(np.float32)
    assert _run(result.model_path, x).shape == (3, CLASSES)


def test_structured_refuses_unknown_layer_names(cnn: Path, tmp_path: Path) -> None:
    from optimizers.config import PruneConfig
    from optimizers.registry import run_pass

    config = PruneConfig(method="structured", exclude_layers=["conv9"])
    with pytest.raises(OptimizerError, match=r"no node called 'conv9'.*Conv"):
        run_pass(cnn, config, _ctx(tmp_path))


def _assert_two_four(path: Path) -> int:
    """Every group of 4 weights along the input dimension has at least 2 zeros; returns the
    number of layers that hold the pattern."""
    holding = 0
    for _, weight, is_output in _weights(path):
        rows = np.moveaxis(weight, 1, -1) if weight.ndim == 4 else weight  # input axis last
        if is_output or rows.shape[-1] % 4:
            continue
        groups = rows.reshape(-1, 4)
        assert ((groups == 0).sum(axis=1) >= 2).all()
        holding += 1
    return holding


def test_two_four_pattern_holds_in_every_group(cnn: Path, tmp_path: Path) -> None:
    from optimizers.config import PruneConfig
    from optimizers.registry import run_pass

    result = run_pass(cnn, PruneConfig(method="2:4"), _ctx(tmp_path, device="cuda"))

    assert _assert_two_four(result.model_path) == 1
    first, second = _node_of(cnn, "Conv"), _node_of(cnn, "Conv", 1)
    assert list(result.details["layers"]) == [second]
    assert result.details["layers"][second]["sparsity"] == pytest.approx(0.5)
    assert "multiple of 4" in result.details["kept_layers"][first]  # 3 input channels
    assert any("TensorRT" in note and "dense" in note for note in result.notes)


def test_two_four_is_refused_on_cpu(cnn: Path, tmp_path: Path) -> None:
    from optimizers.config import PruneConfig
    from optimizers.errors import UnsupportedError
    from optimizers.registry import run_pass

    with pytest.raises(UnsupportedError, match="cuda"):
        run_pass(cnn, PruneConfig(method="2:4"), _ctx(tmp_path))


# --- fine-tuning ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def learnable(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An MLP and a dataset whose labels are its own top-1 classes: a task the unpruned model
    solves exactly and that a pruned copy can learn back."""
    directory = tmp_path_factory.mktemp("learnable")
    torch.manual_seed(0)
    model = _mlp(hidden=32)
    x = torch.randn(256, IN_FEATURES, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        labels = model(x).argmax(dim=1)
    path = _export(model, directory / "learned.onnx", x[:2])
    data = directory / "learned.npz"
    np.savez(data, x=x.numpy(), labels=labels.numpy())
    return path, data


def test_finetune_with_labels_recovers_accuracy_and_keeps_the_zeros(
    learnable: tuple[Path, Path], tmp_path: Path
) -> None:
    from optimizers.config import FinetuneConfig, PruneConfig
    from optimizers.registry import run_pass

    model, data = learnable
    finetune = FinetuneConfig(
        dataset_id="d", epochs=3, learning_rate=1e-2, batch_size=16, validation_split=0.25
    )
    config = PruneConfig(method="magnitude", sparsity=0.9, granularity="layer", finetune=finetune)
    result = run_pass(model, config, _ctx(tmp_path, d=data))

    report = result.details["finetune"]
    assert report["metric"] == "accuracy"
    assert report["best_score"] > report["initial_score"]
    assert report["teacher_score"] is not None  # the unpruned model taught it (alpha 0.5)
    for _, weight, is_output in _weights(result.model_path):
        if not is_output:
            assert (weight == 0).mean() >= 0.9 - 0.01  # trained, and the zeros stayed zero
    assert any("right after pruning" in note for note in result.notes)


def test_finetune_without_labels_distills_from_the_unpruned_model(
    learnable: tuple[Path, Path], tmp_path: Path
) -> None:
    from optimizers.config import FinetuneConfig, PruneConfig
    from optimizers.registry import run_pass

    model, data = learnable
    unlabeled = tmp_path / "unlabeled.npz"
    np.savez(unlabeled, x=np.load(data)["x"])
    finetune = FinetuneConfig(dataset_id="u", epochs=2, learning_rate=5e-3, patience=None)
    config = PruneConfig(method="2:4", finetune=finetune)
    result = run_pass(model, config, _ctx(tmp_path, device="cuda", u=unlabeled))

    report = result.details["finetune"]
    assert report["metric"] == "agreement" and report["teacher_score"] == 1.0
    assert report["epochs_run"] == 2
    assert _assert_two_four(result.model_path) == 2  # the pattern survived training
