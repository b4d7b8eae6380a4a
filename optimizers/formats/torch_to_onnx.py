"""Turn an uploaded PyTorch program into an ONNX model, so the ONNX passes can run on it.

Worker side only: torch is imported inside the functions. A `.pt2` archive is loaded with
`torch.export.load` and exported with the dynamo ONNX exporter (which needs onnxscript);
a TorchScript archive is loaded with `torch.jit.load` and exported with the TorchScript
exporter, with example inputs built from the shapes given at upload.

`torch.export.load` is documented as unsafe for untrusted files: it unpickles weights marked
`use_pickle`, falls back to an unrestricted `torch.load` for sample inputs that the
restricted one refuses, evaluates shape expressions with sympy (Python eval), execs guard
code, and loads AOTInductor shared libraries. The archive is checked against all of these
first (`torch_export_archive.read_torch_export_program`), the sample inputs are loaded here
with `weights_only=True` so the unrestricted fallback can never be reached, and guard code is
dropped before the program is used.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optimizers.errors import InvalidModelError
from optimizers.formats.archive_safety import UnsafeArchiveError
from optimizers.formats.detect import detect_format
from optimizers.formats.kinds import TORCH_EXPORT_OPSET, TORCHSCRIPT_OPSET, UploadFormat
from optimizers.formats.torch_export_archive import read_torch_export_program
from optimizers.formats.torchscript_archive import check_torchscript_pickles
from optimizers.formats.zip_archive import open_checked_zip
from optimizers.model_info import inspect_model
from optimizers.results import ModelInfo

#: Size used for every symbolic dimension of TorchScript example inputs.
EXAMPLE_DIM = 2


@dataclass
class Conversion:
    model_path: Path
    #: What the job started from and how it became ONNX (stored in the job result).
    source: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def convert_to_onnx(
    path: Path, info: ModelInfo, out_dir: Path, *, max_total_bytes: int
) -> Conversion:
    """Convert a `.pt2` or TorchScript upload (`info` is its description from upload time)
    to `out_dir/model.onnx`. Raises InvalidModelError naming the problem."""
    detected = detect_format(path, max_total_bytes=max_total_bytes)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / "model.onnx"
    if detected.format == UploadFormat.torch_export:
        assert detected.member is not None
        exporter = "torch.onnx.export(dynamo=True) of torch.export.load"
        torch_version = _export_program(path, detected.member, target, max_total_bytes)
    elif detected.format == UploadFormat.torchscript:
        exporter = "torch.onnx.export(dynamo=False) of torch.jit.load"
        with open_checked_zip(path, max_total_bytes=max_total_bytes) as archive:
            check_torchscript_pickles(archive)
        torch_version = _export_torchscript(path, info, target)
    else:
        raise InvalidModelError(f"a {detected.format} upload is not a PyTorch program")
    try:
        converted = inspect_model(target)
    except InvalidModelError as exc:
        raise InvalidModelError(
            f"the ONNX model converted from the {detected.format} upload is not valid: "
            f"{exc.message}"
        ) from exc
    source = {
        "format": detected.format.value,
        "converted": True,
        "exporter": exporter,
        "torch_version": torch_version,
        "opset": converted.opset,
        "inputs": [t.model_dump() for t in converted.inputs],
        "outputs": [t.model_dump() for t in converted.outputs],
    }
    note = (
        f"the {detected.format} upload was converted to ONNX (opset {converted.opset}) with "
        f"{exporter}; the baseline in the metrics is that ONNX model run in onnxruntime, not "
        "the PyTorch program"
    )
    return Conversion(model_path=target, source=source, notes=[note])


def _export_program(path: Path, root: str, target: Path, max_total_bytes: int) -> str:
    import torch

    with open_checked_zip(path, max_total_bytes=max_total_bytes) as archive:
        read_torch_export_program(archive, root)
        sample_inputs = archive.read(f"{root}/data/sample_inputs/model.pt")
    if sample_inputs:
        try:
            torch.load(io.BytesIO(sample_inputs), weights_only=True)
        except Exception as exc:
            raise UnsafeArchiveError(
                "the .pt2 archive's sample inputs are not plain tensors (torch.load with "
                f"weights_only=True refused them: {_first_line(exc)}); modelpress does not load "
                "them"
            ) from exc
    try:
        program = torch.export.load(str(path))
    except Exception as exc:
        raise InvalidModelError(
            f"torch.export.load could not read the .pt2 archive: {_first_line(exc)}"
        ) from exc
    # Guard code is Python source that torch would exec when the program is called; the
    # exporter does not need it.
    program._guards_code = []
    try:
        onnx_program = torch.onnx.export(
            program, dynamo=True, opset_version=TORCH_EXPORT_OPSET, verbose=False
        )
        if onnx_program is None:
            raise RuntimeError("the exporter returned no program")
        onnx_program.save(str(target))
    except Exception as exc:
        raise InvalidModelError(
            f"the torch.export program could not be converted to ONNX: {type(exc).__name__}: "
            f"{_first_line(exc)}"
        ) from exc
    return str(torch.__version__)


def _export_torchscript(path: Path, info: ModelInfo, target: Path) -> str:
    import torch

    try:
        module = torch.jit.load(str(path), map_location="cpu")
        module.eval()
    except Exception as exc:
        raise InvalidModelError(
            f"torch.jit.load could not read the TorchScript archive: {_first_line(exc)}"
        ) from exc
    names = [tensor.name for tensor in info.inputs]
    args = tuple(_example(torch, tensor.dtype, tensor.shape) for tensor in info.inputs)
    dynamic_axes: dict[str, dict[int, str]] = {}
    for tensor in info.inputs:
        axes = {axis: dim for axis, dim in enumerate(tensor.shape) if isinstance(dim, str)}
        if axes:
            dynamic_axes[tensor.name] = axes
    try:
        with torch.no_grad():
            outputs = module(*args)
    except Exception as exc:
        raise InvalidModelError(
            f"the TorchScript module failed on example inputs of the shapes given at upload "
            f"({ {t.name: t.shape for t in info.inputs} }): {type(exc).__name__}: "
            f"{_first_line(exc)}"
        ) from exc
    flat = list(outputs) if isinstance(outputs, tuple | list) else [outputs]
    if not all(isinstance(out, torch.Tensor) for out in flat):
        raise InvalidModelError("the TorchScript forward must return a tensor or a tuple of them")
    output_names = ["output"] if len(flat) == 1 else [f"output_{i}" for i in range(len(flat))]
    batch = _batch_dim(info)
    if batch is not None:
        for name, out in zip(output_names, flat, strict=True):
            if out.dim() > 0 and out.shape[0] == EXAMPLE_DIM:
                dynamic_axes[name] = {0: batch}
    try:
        torch.onnx.export(
            module,
            args,
            str(target),
            dynamo=False,
            input_names=names,
            output_names=output_names,
            dynamic_axes=dynamic_axes,
            opset_version=TORCHSCRIPT_OPSET,
        )
    except Exception as exc:
        # torch's exporter sees no tensor ranks in a loaded archive, so some modules that
        # export from Python (torch's MultiheadAttention) do not export from TorchScript.
        raise InvalidModelError(
            f"the TorchScript module could not be converted to ONNX: {type(exc).__name__}: "
            f"{_first_line(exc)}. Upload the model as a .pt2 program (torch.export) or as "
            "ONNX instead"
        ) from exc
    return str(torch.__version__)


def _batch_dim(info: ModelInfo) -> str | None:
    """The name of a symbolic axis 0 shared by the inputs (the batch), if there is one."""
    firsts = {tensor.shape[0] if tensor.shape else None for tensor in info.inputs}
    if len(firsts) == 1:
        (first,) = firsts
        if isinstance(first, str):
            return first
    return None


def _example(torch: Any, dtype: str, shape: list[Any]) -> Any:
    sizes = [dim if isinstance(dim, int) else EXAMPLE_DIM for dim in shape]
    torch_dtype = getattr(torch, dtype)
    if torch_dtype.is_floating_point:
        return torch.randn(*sizes, dtype=torch_dtype)
    return torch.zeros(*sizes, dtype=torch_dtype)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:500] if text else type(exc).__name__
