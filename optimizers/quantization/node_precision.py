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
    #: Fused attention nodes a static pass quantizes dynamically (see `plan`).
    attention_dynamic: list[str] = field(default_factory=list)

    @property
    def out_of_main(self) -> list[str]:
        """Nodes the main quantization must not touch."""
        own = f"int8_{self.method}"
        chosen = [name for name, value in self.per_node.items() if value != own]
        return list(
            dict.fromkeys([*self.kept_float, *chosen, *self.smoothed, *self.attention_dynamic])
        )

    def nodes(self, precision: str) -> list[str]:
        return [name for name, value in self.per_node.items() if value == precision]

    def summary(self) -> dict[str, list[str]]:
        chosen = {
            precision: self.nodes(precision)
            for precision in ("int8_static", "int8_dynamic", "fp16", "float")
        }
        chosen["int8_dynamic"] = [*chosen["int8_dynamic"], *self.attention_dynamic]
        return {precision: names for precision, names in chosen.items() if names}


def plan(model: onnx.ModelProto, config: Int8Config, *, smoothed: list[str]) -> Plan:
    """The plan for `model` (the graph about to be quantized, whose node names the spec's
    `per_node` names were checked against)."""
    kept = keep_float_nodes(model, config.keep_float) if config.keep_float else []
    attention = _fused_attention_for_dynamic(model, config)
    # A node named in per_node gets that precision even when a keep_float group holds it.
    kept = [name for name in kept if name not in config.per_node and name not in attention]
    return Plan(
        method=config.method,
        kept_float=kept,
        per_node=dict(config.per_node),
        smoothed=list(smoothed),
        attention_dynamic=attention,
    )


def _fused_attention_for_dynamic(model: onnx.ModelProto, config: Int8Config) -> list[str]:
    """onnxruntime's fused `Attention` operator (written by the transformer optimizer) has no
    static int8 form: a static pass would leave it float together with its Q/K/V projection
    weights. Its dynamic form, QAttention, quantizes only that projection and computes scores
    and softmax in float, which is what keep_float's "attention" group asks for; so in a
    static pass every such node the spec selects and does not place itself goes dynamic."""
    if config.method != "static":
        return []
    include, exclude = config.include, config.exclude
    names: list[str] = []
    for node in model.graph.node:
        if node.op_type != "Attention" or node.domain != "com.microsoft" or not node.name:
            continue
        if node.name in config.per_node:
            continue
        if exclude is not None and (node.name in exclude.nodes or "Attention" in exclude.op_types):
            continue
        if include is not None and not (
            node.name in include.nodes or "Attention" in include.op_types
        ):
            continue
        names.append(node.name)
    return names


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
    dynamic = [*dynamic, *plan.attention_dynamic]
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
                f"onnxruntime could not quantize {dynamic[:5]} dynamically ({exc}); give them "
                "per_node 'float' (or 'int8_static') instead"
            ) from exc
        quantized = output
        asked = len(dynamic) - len(plan.attention_dynamic)
        if asked:
            notes.append(f"{asked} node(s) quantized dynamically as per_node asks")
        if plan.attention_dynamic:
            notes.append(
                f"{len(plan.attention_dynamic)} fused Attention node(s) quantized dynamically "
                "(QAttention: int8 Q/K/V projection, scores and softmax in float): static int8 "
                "has no form of onnxruntime's fused attention"
            )
    half = plan.nodes("fp16")
    if half:
        quantized = single_nodes_to_fp16(quantized, half, workdir, notes)
    return quantized
