""" "Exclude these and run again": the job's spec with one quantize pass replaced by the pass
its sensitivity report suggests, opened in the composer (`/jobs/new?spec=<JSON>`)."""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import quote

#: The name a quantize pass's report gets (optimizers/quantization/sensitivity_report.py).
_REPORT_NAME = re.compile(r"pass(\d+)-sensitivity\.json")

COMPOSER = "/jobs/new"


def pass_number(artifact_name: str) -> int | None:
    found = _REPORT_NAME.fullmatch(artifact_name)
    return int(found.group(1)) if found else None


def rerun_spec(
    stored_spec: dict[str, Any], *, number: int, suggested_pass: dict[str, Any]
) -> dict[str, Any] | None:
    """The spec as submitted, with pass `number` (1-based) replaced; None when the spec has
    no such pass. A sweep's labels named the old values, so they are left out."""
    passes = list(stored_spec.get("passes") or [])
    if not 1 <= number <= len(passes):
        return None
    passes[number - 1] = suggested_pass
    spec = {key: value for key, value in stored_spec.items() if key != "labels"}
    spec["passes"] = passes
    return spec


def composer_url(spec: dict[str, Any]) -> str:
    return f"{COMPOSER}?spec=" + quote(json.dumps(spec, separators=(",", ":")), safe="")
