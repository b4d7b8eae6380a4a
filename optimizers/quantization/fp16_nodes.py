"""Single nodes of an int8 model moved to float16 (mixed precision's `fp16` fallback and
`per_node` precision `fp16`), with casts at their edges."""

from __future__ import annotations

from pathlib import Path

import onnx

from optimizers.errors import QuantizationError
from optimizers.external_data import needs_external_data, save_model


def nodes_to_fp16(
    path: Path,
    kept: set[str],
    workdir: Path,
    notes: list[str],
    *,
    asked_by: str = "fallback 'fp16'",
    instead: str = "use fallback 'fp32'",
) -> Path:
    """Convert the nodes kept out of int8 to float16, with casts at their edges; the model's
    inputs and outputs stay float32."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(path))
    for index, node in enumerate(model.graph.node):
        # The converter takes a list of node names to leave alone; every node needs one.
        node.name = node.name or f"{node.op_type}_unnamed_{index}"
    names = [node.name for node in model.graph.node]
    missing = sorted(kept - set(names))
    if missing:
        raise QuantizationError(
            f"{asked_by}: nodes {missing[:5]} kept float are not in the quantized graph "
            f"under those names; {instead}"
        )
    try:
        converted = convert_float_to_float16(
            model,
            keep_io_types=True,
            node_block_list=[name for name in names if name not in kept],
        )
    except Exception as exc:
        raise QuantizationError(
            f"{asked_by}: onnxruntime could not convert the kept nodes to float16 ({exc}); "
            f"{instead}"
        ) from exc
    output = workdir / f"{path.stem}.fp16-fallback.onnx"
    save_model(converted, output, external_data=needs_external_data(path))
    notes.append(f"nodes kept out of int8 run in float16: {sorted(kept)[:10]}")
    return output
