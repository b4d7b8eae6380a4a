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

#: Every operation gets a few examples first (about 35 operations); then, while the time
#: budget lasts, more. On a slow machine the second round is cut short, never the first.
FIRST_EXAMPLES = 2
MORE_EXAMPLES = 10
BUDGET_S = 60.0
CHECKS = [
    not_a_server_error,
    response_schema_conformance,
    content_type_conformance,
    status_code_conformance,
]


def _fuzz(operation: Any, examples: int, headers: dict[str, str]) -> str | None:
    """The failure this operation's generated requests found, None if none."""

    @given(case=operation.as_strategy())
    @settings(
        max_examples=examples,
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
        return f"{operation.label}: {exc}"[:2000]
    return None


def test_generated_requests_get_no_5xx_and_match_the_schema(client: TestClient) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", client.app)
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 30
    started = time.monotonic()
    failures = [f for op in operations if (f := _fuzz(op, FIRST_EXAMPLES, headers))]
    second_round: list[Any] = []
    for operation in operations:
        if time.monotonic() - started > BUDGET_S:
            break
        second_round.append(operation)
        if failure := _fuzz(operation, MORE_EXAMPLES, headers):
            failures.append(failure)
    if len(second_round) < len(operations):
        warnings.warn(
            f"{len(second_round)} of {len(operations)} operations got {MORE_EXAMPLES} examples "
            f"within {BUDGET_S} s, the others {FIRST_EXAMPLES}",
            stacklevel=1,
        )
    assert failures == [], "\n\n".join(failures)
    # The fuzzing did not take the admin key away.
    assert client.get("/v1/keys").status_code == 200
