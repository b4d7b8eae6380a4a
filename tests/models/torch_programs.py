"""Tiny PyTorch programs saved the ways users save them (torch.export, TorchScript, torch.save),
and ONNX models with external data, for the upload and conversion tests. torch is imported
inside the functions so that importing this module stays cheap."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import onnx

from tests.models.onnx_basic import make_mlp

IN_FEATURES, CLASSES = 8, 3


def tiny_module() -> Any:
    import torch

    class TinyNet(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = torch.nn.Linear(IN_FEATURES, 16)
            self.fc2 = torch.nn.Linear(16, CLASSES)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc2(torch.relu(self.fc1(x)))

    torch.manual_seed(0)
    return TinyNet().eval()


def save_pt2(path: Path, module: Any = None) -> Path:
    """torch.export program with a dynamic batch axis named 'batch'."""
    import torch

    module = module if module is not None else tiny_module()
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(
        module, (torch.randn(4, IN_FEATURES),), dynamic_shapes={"x": {0: batch}}
    )
    torch.export.save(program, str(path))
    return path


def save_torchscript(path: Path, module: Any = None) -> Path:
    import torch

    module = module if module is not None else tiny_module()
    torch.jit.script(module).save(str(path))
    return path


def save_state_dict(path: Path) -> Path:
    import torch

    torch.save(tiny_module().state_dict(), str(path))
    return path


def make_external_data_zip(path: Path, workdir: Path, *, hidden: int = 64) -> Path:
    """An MLP whose weights live in `mlp.onnx.data`, zipped together with it."""
    workdir.mkdir(parents=True, exist_ok=True)
    plain = make_mlp(workdir / "plain.onnx", in_features=32, hidden=hidden, classes=10)
    model = onnx.load(str(plain))
    onnx.save(
        model,
        str(workdir / "mlp.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="mlp.onnx.data",
        size_threshold=0,
    )
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.write(workdir / "mlp.onnx", "mlp.onnx")
        archive.write(workdir / "mlp.onnx.data", "mlp.onnx.data")
    return path


def rewrite_zip(source: Path, target: Path, replace: dict[str, bytes]) -> Path:
    """Copy a zip, replacing the content of the members named in `replace`."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for info in old.infolist():
            new.writestr(info, replace.get(info.filename, old.read(info)))
    return target


def encoder_classifier(
    *, width: int = 16, heads: int = 2, layers: int = 1, classes: int = 3
) -> Any:
    """torch's post-norm TransformerEncoder (MultiheadAttention: one fused query/key/value
    projection) with a mean-pooled linear head: [batch, seq, width] -> [batch, classes]."""
    import torch

    class EncoderClassifier(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            layer = torch.nn.TransformerEncoderLayer(
                width, heads, 2 * width, dropout=0.0, batch_first=True
            )
            self.encoder = torch.nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
            self.head = torch.nn.Linear(width, classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.encoder(x).mean(dim=1))

    torch.manual_seed(0)
    return EncoderClassifier().eval()


def export_encoder(
    module: Any, path: Path, *, width: int = 16, seq: int = 5, output: str = "logits"
) -> Path:
    """`module` (input 'x' of [batch, seq, width]) exported with torch's TorchScript exporter,
    opset 17, batch axis dynamic."""
    import torch

    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # the fused kernel has no ONNX export
    try:
        torch.onnx.export(
            module,
            (torch.randn(2, seq, width),),
            str(path),
            input_names=["x"],
            output_names=[output],
            dynamic_axes={"x": {0: "batch"}, output: {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return path
