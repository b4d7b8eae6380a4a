"""4-bit blocked weights for MatMul (onnxruntime's MatMulNBits), activations stay float."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx
from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

from optimizers.config import Int4WeightOnlyConfig
from optimizers.errors import QuantizationError
from optimizers.external_data import data_file_for, needs_external_data
from optimizers.quantization import node_selection as selection
from optimizers.results import PassContext, PassResult


def quantize_int4(model_path: Path, config: Int4WeightOnlyConfig, ctx: PassContext) -> PassResult:
    start, end = ctx.progress_span
    ctx.progress("quantizing", start, "quantizing MatMul weights to 4 bits")
    notes: list[str] = []
    external_data = needs_external_data(model_path)
    model = onnx.load(str(model_path))  # external data is read from the model's folder
    selection.check_and_name(model, config)
    excluded: list[str] = []
    if config.scope == "partial":
        resolved = selection.resolve(model, config)
        excluded = [
            node.name
            for node in selection.iter_nodes(model.graph)
            if node.op_type == "MatMul" and not resolved.selects(node)
        ]
    try:
        quantizer = MatMulNBitsQuantizer(
            model,
            bits=4,
            block_size=config.block_size,
            is_symmetric=config.symmetric,
            nodes_to_exclude=excluded,
        )
        quantizer.process()
    except Exception as exc:
        raise QuantizationError(f"onnxruntime could not quantize MatMul weights: {exc}") from exc
    ctx.workdir.mkdir(parents=True, exist_ok=True)
    output = ctx.workdir / f"{model_path.stem}.int4.onnx"
    # With external data onnxruntime writes the tensors to '<name>.data' beside the model,
    # appending to an existing file.
    data_file_for(output).unlink(missing_ok=True)
    quantizer.model.save_model_to_file(str(output), use_external_data_format=external_data)
    ctx.progress("quantizing", end, "quantization finished")

    quantized = sum(
        1
        for node in selection.iter_nodes(onnx.load(str(output), load_external_data=False).graph)
        if node.op_type == "MatMulNBits"
    )
    if quantized == 0:
        notes.append(
            "no MatMul with constant weights was found"
            + (" among the selected nodes" if config.scope == "partial" else "")
            + ": the output is the float model"
        )
    details: dict[str, Any] = {
        "method": "int4_weight_only",
        "scope": config.scope,
        "block_size": config.block_size,
        "symmetric": config.symmetric,
        "matmul_nbits_nodes": quantized,
        "quantized_nodes": quantized,
        "excluded_nodes": excluded,
    }
    return PassResult(model_path=output, notes=notes, details=details)
