"""Job specs as stored over time, upgraded to the current version before they are validated.

Version 1 (no `spec_version`): one quantize config for every method, so a stored pass may hold
fields its method never read (`block_size` on `dynamic`, `format` on `fp16`, ...), and int8
weight-only was `weights_only: true` on the methods `dynamic` or `static` with scope
`partial`. Version 2: one config class per method, with only its own fields; int8 weight-only
is the method `int8_weight_only`, like `int4_weight_only`; specs carry `spec_version`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, Final

SPEC_VERSION: Final = 2

_SELECTION = {"kind", "method", "scope", "include", "exclude"}
_INT8 = _SELECTION | {"mixed", "per_channel", "weight_type"}
#: The fields each quantize method takes in version 2 (frozen here: a later version that
#: changes them gets its own step, so old specs keep upgrading the same way).
_V2_QUANTIZE_FIELDS = {
    "dynamic": _INT8,
    "static": _INT8 | {"format", "activation_type", "calibration"},
    "fp16": _SELECTION,
    "int8_weight_only": _SELECTION | {"per_channel", "weight_type"},
    "int4_weight_only": _SELECTION | {"block_size", "symmetric"},
}


def upgrade_spec(stored: Mapping[str, Any]) -> dict[str, Any]:
    """`stored` (a spec of any version, as JSON) in the current version's shape."""
    spec = copy.deepcopy(dict(stored))
    version = spec.get("spec_version", 1)
    if version == 1:
        passes = spec.get("passes")
        if isinstance(passes, list):
            spec["passes"] = [_pass_v1_to_v2(entry) for entry in passes]
        version = 2
    spec["spec_version"] = version
    return spec


def _pass_v1_to_v2(entry: Any) -> Any:
    if not isinstance(entry, dict) or entry.get("kind") != "quantize":
        return entry
    entry = dict(entry)
    if entry.pop("weights_only", False):
        entry = _weights_only_v1_to_v2(entry)
    taken = _V2_QUANTIZE_FIELDS.get(str(entry.get("method")))
    if taken is None:
        return entry  # not a method of version 1: validation says so
    # Version 1 accepted, and ignored, the other methods' fields.
    return {key: value for key, value in entry.items() if key in taken}


def _weights_only_v1_to_v2(entry: dict[str, Any]) -> dict[str, Any]:
    entry["method"] = "int8_weight_only"
    selected = any(
        isinstance(entry.get(key), dict) and any(entry[key].get(k) for k in ("op_types", "nodes"))
        for key in ("include", "exclude")
    )
    if not selected:
        entry["scope"] = "full"
        entry.pop("include", None)
        entry.pop("exclude", None)
    return entry
