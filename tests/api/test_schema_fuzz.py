"""Requests generated from the OpenAPI document: no answer is a 5xx, and every answer matches
the schema the document gives for it."""

from __future__ import annotations

import time
import warnings
from typing import Any

import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import ADMIN_KEY

#: Examples per operation (over 30 operations; about 10 s in all on a quiet 2-core machine),
#: and a time budget: on a slower machine, operations not reached within it are named in a
#: warning rather than run, so the test stays under a minute.
EXAMPLES = 25
BUDGET_S = 50.0
CHECKS = [
    not_a_server_error,
    response_schema_conformance,
    content_type_conformance,
    status_code_conformance,
]


def test_generated_requests_get_no_5xx_and_match_the_schema(client: TestClient) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", client.app)
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    failures: list[str] = []
    operations = 0
    not_reached: list[str] = []
    started = time.monotonic()
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1
        if time.monotonic() - started > BUDGET_S:
            not_reached.append(operation.label)
            continue

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        def run(case: Any) -> None:
            case.call_and_validate(headers=headers, checks=CHECKS)

        try:
            run()
        except Exception as exc:  # collected so one run reports every failing operation
            failures.append(f"{operation.label}: {exc}"[:2000])
    assert operations >= 30
    if not_reached:
        warnings.warn(f"not fuzzed within {BUDGET_S} s: {', '.join(not_reached)}", stacklevel=1)
    assert failures == [], "\n\n".join(failures)
    # The fuzzing did not take the admin key away.
    assert client.get("/v1/keys").status_code == 200
