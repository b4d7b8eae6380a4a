"""Per-node precision of an int8 pass: which nodes the main quantization leaves alone
(`keep_float` groups, `per_node` choices, SmoothQuant's own Mul nodes), and the steps after
it that give the `per_node` nodes their precision: dynamic int8 for `int8_dynamic` in a
static pass, float16 for `fp16`; `float` nodes simply stay as they are."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import onnx
from onnxruntime.quantization import QuantType, quantize_dynamic

from optimizers.config import Int8Config
from optimizers.errors import QuantizationError
from optimizers.external_data import data_file_for
from optimizers.quantization.fp16_nodes import single_nodes_to_fp16
from optimizers.quantization.transformer_ops import keep_float_nodes

_WEIGHT_TYPES = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}


@dataclass
class Plan:
    """Where each node that is not plain int8 of the pass's method goes."""

    method: str
    kept_float: list[str] = field(default_factory=list)
    per_node: dict[str, str] = field(default_factory=dict)
    smoothed: list[str] = field(default_factory=list)

    @property
    def out_of_main(self) -> list[str]:
        """Nodes the main quantization must not touch."""
        own = f"int8_{self.method}"
        chosen = [name for name, value in self.per_node.items() if value != own]
        return list(dict.fromkeys([*self.kept_float, *chosen, *self.smoothed]))

    def nodes(self, precision: str) -> list[str]:
        return [name for name, value in self.per_node.items() if value == precision]

    def summary(self) -> dict[str, list[str]]:
        return {
            precision: self.nodes(precision)
            for precision in ("int8_static", "int8_dynamic", "fp16", "float")
            if self.nodes(precision)
        }


def plan(model: onnx.ModelProto, config: Int8Config, *, smoothed: list[str]) -> Plan:
    """The plan for `model` (the graph about to be quantized, whose node names the spec's
    `per_node` names were checked against)."""
    kept = keep_float_nodes(model, config.keep_float) if config.keep_float else []
    # A node named in per_node gets that precision even when a keep_float group holds it.
    kept = [name for name in kept if name not in config.per_node]
    return Plan(
        method=config.method,
        kept_float=kept,
        per_node=dict(config.per_node),
        smoothed=list(smoothed),
    )


def apply_after(
    quantized: Path,
    plan: Plan,
    config: Int8Config,
    workdir: Path,
    notes: list[str],
    *,
    external_data: bool,
) -> Path:
    """The quantized model with the `per_node` nodes at their precision."""
    dynamic = plan.nodes("int8_dynamic") if plan.method == "static" else []
    if dynamic:
        output = workdir / f"{quantized.stem}.dynamic-nodes.onnx"
        data_file_for(output).unlink(missing_ok=True)
        try:
            quantize_dynamic(
                quantized,
                output,
                per_channel=config.per_channel,
                weight_type=_WEIGHT_TYPES[config.weight_type],
                nodes_to_quantize=dynamic,
                use_external_data_format=external_data,
            )
        except Exception as exc:
            raise QuantizationError(
                f"per_node 'int8_dynamic': onnxruntime could not quantize {dynamic[:5]} "
                f"dynamically ({exc}); choose 'float' or 'int8_static' for them"
            ) from exc
        quantized = output
        notes.append(f"{len(dynamic)} node(s) quantized dynamically as per_node asks")
    half = plan.nodes("fp16")
    if half:
        quantized = single_nodes_to_fp16(quantized, half, workdir, notes)
    return quantized
