"""Opset upgrades that quantization needs (per-channel scales appeared in opset 13)."""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import version_converter

from optimizers.errors import QuantizationError
from optimizers.external_data import needs_external_data, save_model

#: DequantizeLinear/QuantizeLinear take an `axis` (per-channel scales) from opset 13.
PER_CHANNEL_OPSET = 13


def default_opset(model: onnx.ModelProto) -> int | None:
    return next(
        (entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), None
    )


def upgrade(model_path: Path, output: Path, *, target: int, reason: str) -> Path:
    """Convert the model to opset `target` and save it at `output` (with external data when
    the input has it or is large); QuantizationError when onnx's version converter cannot."""
    external_data = needs_external_data(model_path)
    model = onnx.load(str(model_path))  # external data is read from the model's folder
    current = default_opset(model)
    try:
        converted = version_converter.convert_version(model, target)
        save_model(converted, output, external_data=external_data)
        # The path form also checks models over 2 GB and those with external data.
        onnx.checker.check_model(str(output))
    except Exception as exc:
        raise QuantizationError(
            f"{reason} needs opset {target}, and the model (opset {current}) could not be "
            f"upgraded: {exc}. Set per_channel to false, or re-export the model with opset "
            f">= {target}"
        ) from exc
    return output
