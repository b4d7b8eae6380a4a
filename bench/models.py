"""Small torch models for the quantization benchmark, exported to ONNX with a dynamic batch
axis, and `.npz` datasets for them whose labels are the float model's own top-1 classes.

Weights use torch's default initialisation (Kaiming-uniform linear and conv layers), seeded,
so every run builds the same models; no download is needed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: Export settings shared by every model: the TorchScript exporter (the dynamo exporter
#: needs onnxscript) at opset 17, the opset onnxruntime's quantizers handle best.
OPSET = 17
BATCH_AXIS = "batch"


@dataclass(frozen=True)
class BenchModel:
    """One model of the benchmark: how to build it and what its input looks like."""

    name: str
    description: str
    input_name: str
    #: Input shape without the batch axis.
    sample_shape: tuple[int, ...]
    #: Whether the model's weights sit in MatMul nodes (what int4 weight-only quantizes).
    has_matmul_weights: bool
    build: Callable[[], object]


def _mlp() -> object:
    import torch

    return torch.nn.Sequential(
        torch.nn.Linear(784, 1024),
        torch.nn.ReLU(),
        torch.nn.Linear(1024, 1024),
        torch.nn.ReLU(),
        torch.nn.Linear(1024, 10),
    )


def _cnn() -> object:
    import torch

    def block(inputs: int, outputs: int, stride: int) -> list[torch.nn.Module]:
        return [
            torch.nn.Conv2d(inputs, outputs, 3, stride=stride, padding=1, bias=False),
            torch.nn.BatchNorm2d(outputs),
            torch.nn.ReLU(),
        ]

    return torch.nn.Sequential(
        *block(3, 32, 1),
        *block(32, 64, 2),
        *block(64, 64, 1),
        *block(64, 128, 2),
        *block(128, 128, 1),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(128, 10),
    )


class _EncoderClassifier:
    """Factory for a MiniLM-sized encoder: embeddings [batch, seq, d_model] -> 4 post-norm
    encoder layers (6 heads, feed-forward 4x, GELU) -> mean over tokens -> linear head."""

    d_model = 384
    heads = 6
    layers = 4
    seq_len = 128
    classes = 10

    @classmethod
    def build(cls) -> object:
        import torch

        class EncoderClassifier(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                layer = torch.nn.TransformerEncoderLayer(
                    d_model=cls.d_model,
                    nhead=cls.heads,
                    dim_feedforward=4 * cls.d_model,
                    dropout=0.0,
                    activation="gelu",
                    batch_first=True,
                )
                # The nested-tensor fast path is an inference shortcut that does not export.
                self.encoder = torch.nn.TransformerEncoder(
                    layer, num_layers=cls.layers, enable_nested_tensor=False
                )
                self.head = torch.nn.Linear(cls.d_model, cls.classes)
                # TransformerEncoder deep-copies one layer, so every layer starts identical
                # (and the exporter would share their weights); like nn.Transformer, give
                # each weight matrix its own Xavier-uniform draw.
                for parameter in self.encoder.parameters():
                    if parameter.dim() > 1:
                        torch.nn.init.xavier_uniform_(parameter)

            def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
                return self.head(self.encoder(embeddings).mean(dim=1))

        return EncoderClassifier()


MODELS: dict[str, BenchModel] = {
    model.name: model
    for model in (
        BenchModel(
            name="mlp",
            description="MLP 784-1024-1024-10, ReLU",
            input_name="x",
            sample_shape=(784,),
            has_matmul_weights=True,
            build=_mlp,
        ),
        BenchModel(
            name="cnn",
            description="CNN 5x(conv3x3+BN+ReLU) 32-128 channels on 3x32x32, linear head",
            input_name="image",
            sample_shape=(3, 32, 32),
            has_matmul_weights=False,
            build=_cnn,
        ),
        BenchModel(
            name="transformer",
            description=(
                f"encoder {_EncoderClassifier.layers} layers, d_model {_EncoderClassifier.d_model}"
                f", {_EncoderClassifier.heads} heads, ff {4 * _EncoderClassifier.d_model}, "
                f"seq {_EncoderClassifier.seq_len}, mean-pool + linear head"
            ),
            input_name="embeddings",
            sample_shape=(_EncoderClassifier.seq_len, _EncoderClassifier.d_model),
            has_matmul_weights=True,
            build=_EncoderClassifier.build,
        ),
    )
}


def export_model(spec: BenchModel, path: Path, *, seed: int = 0) -> Path:
    """Build `spec` with seeded weights (eval mode) and export it to `path`."""
    import torch

    torch.manual_seed(seed)
    module = spec.build()
    assert isinstance(module, torch.nn.Module)
    module.eval()
    example = torch.randn(2, *spec.sample_shape)
    # The fused encoder-layer kernel that eval mode picks has no ONNX export; the plain path
    # computes the same thing with exportable ops.
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad():
            torch.onnx.export(
                module,
                (example,),
                str(path),
                input_names=[spec.input_name],
                output_names=["logits"],
                dynamic_axes={spec.input_name: {0: BATCH_AXIS}, "logits": {0: BATCH_AXIS}},
                opset_version=OPSET,
                do_constant_folding=True,
                dynamo=False,
            )
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return path


def make_dataset(
    spec: BenchModel, model_path: Path, path: Path, *, samples: int, seed: int
) -> Path:
    """`samples` standard-normal inputs and, as `labels`, the float ONNX model's top-1 class
    for each: the baseline scores 1.0, so any accuracy drop comes from the optimization."""
    import onnxruntime as ort

    rng = np.random.default_rng(seed)
    inputs = rng.standard_normal((samples, *spec.sample_shape)).astype(np.float32)
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    logits = np.concatenate(
        [
            session.run(None, {spec.input_name: inputs[start : start + 32]})[0]
            for start in range(0, samples, 32)
        ]
    )
    np.savez(
        path, **{spec.input_name: inputs, "labels": np.argmax(logits, axis=1).astype(np.int64)}
    )
    return path
