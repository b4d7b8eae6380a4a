"""The technique families an auto search tries, and how each is named to the user."""

from __future__ import annotations

#: A family as the user reads it; a combination ("a+b") reads "A + B".
LABELS: dict[str, str] = {
    "graph": "graph optimization",
    "int8_dynamic": "int8 dynamic",
    "int8_dynamic_smooth": "int8 dynamic with SmoothQuant",
    "int8_static": "int8 static",
    "int8_static_transformer": "int8 static (transformer preset)",
    "fused": "transformer fusions",
    "mixed": "mixed precision",
    "fp16": "fp16",
    "int8_weight_only": "int8 weight-only",
    "int4_weight_only": "int4 weight-only",
    "prune_structured": "structured pruning",
    "distill": "distillation",
}

#: Families whose passes are int8 with activations (what a combination adds after shrinking).
INT8_FAMILIES = frozenset(
    {"int8_dynamic", "int8_dynamic_smooth", "int8_static", "int8_static_transformer"}
)
#: Families with calibrated activations: their sensitivity report can name nodes to keep float.
STATIC_FAMILIES = frozenset({"int8_static", "int8_static_transformer"})
#: Families that make the model narrower by training.
SHRINK_FAMILIES = frozenset({"prune_structured", "distill"})

#: The `allow` entry each single family belongs to.
TECHNIQUE: dict[str, str] = {
    "prune_structured": "prune",
    "distill": "distill",
}


def technique(family: str) -> str:
    """`quantize`, `prune` or `distill`: what `allow` must name for the family to be tried."""
    return TECHNIQUE.get(family, "quantize")


def label(family: str) -> str:
    return " + ".join(LABELS.get(part, part.replace("_", " ")) for part in family.split("+"))
