"""The upload formats, the names they are stored under, and how to say which one a file is."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

#: Opsets of the ONNX models that PyTorch uploads are converted to (see torch_export).
TORCH_EXPORT_OPSET = 18
TORCHSCRIPT_OPSET = 17

EXPORT_ADVICE = (
    "export the model instead: `ep = torch.export.export(model, example_inputs)` and "
    '`torch.export.save(ep, "model.pt2")`, or `torch.jit.script(model).save("model.pt")` '
    "(TorchScript, upload with an 'input_shapes' field), or `torch.onnx.export(model, "
    'example_inputs, "model.onnx")`'
)


class UploadFormat(StrEnum):
    onnx = "onnx"
    onnx_zip = "onnx_zip"
    torch_export = "torch_export"
    torchscript = "torchscript"


#: The name each format is stored under.
STORAGE_NAMES = {
    UploadFormat.onnx: "model.onnx",
    UploadFormat.onnx_zip: "model.zip",
    UploadFormat.torch_export: "model.pt2",
    UploadFormat.torchscript: "model.pt",
}


@dataclass(frozen=True)
class Detected:
    format: UploadFormat
    #: The archive's top folder for PyTorch archives; the .onnx member for an ONNX zip.
    member: str | None = None


def storage_name(format: str) -> str:
    return STORAGE_NAMES[UploadFormat(format)]


def format_label(format: UploadFormat) -> str:
    return {
        UploadFormat.onnx: "an ONNX model",
        UploadFormat.onnx_zip: "a zip of an ONNX model with external data",
        UploadFormat.torch_export: "a torch.export program (.pt2)",
        UploadFormat.torchscript: "a TorchScript archive",
    }[format]
