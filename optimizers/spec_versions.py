"""Job specs as stored over time, upgraded to the current version before they are validated.

Version 1 (no `spec_version`): int8 weight-only quantization was `weights_only: true` on the
methods `dynamic` or `static` with scope `partial`. Version 2: it is the method
`int8_weight_only`, like `int4_weight_only`; specs carry `spec_version`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

SPEC_VERSION = 2


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
    if not entry.pop("weights_only", False):
        return entry
    entry["method"] = "int8_weight_only"
    # Weight-only never read calibration data (it said so in a note); it takes none now.
    entry.pop("calibration", None)
    selected = any(
        isinstance(entry.get(key), dict) and any(entry[key].get(k) for k in ("op_types", "nodes"))
        for key in ("include", "exclude")
    )
    if not selected:
        entry["scope"] = "full"
        entry.pop("include", None)
        entry.pop("exclude", None)
    return entry
