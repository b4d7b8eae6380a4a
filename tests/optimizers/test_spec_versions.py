"""Job specs stored before the spec version (fixtures written by that code) still load, in
today's shape: int8 weight-only is the method `int8_weight_only`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.jobspec import JobSpec, load_stored_spec

FIXTURES = Path(__file__).parent / "fixtures" / "specs_v1"


@pytest.mark.parametrize("path", sorted(FIXTURES.glob("*.json")), ids=lambda p: p.stem)
def test_every_stored_v1_spec_loads_and_round_trips(path: Path) -> None:
    stored = json.loads(path.read_text())
    spec = load_stored_spec(stored)

    assert spec.spec_version == 2
    assert spec.model_id == stored["model_id"]
    assert [p.kind for p in spec.passes] == [p["kind"] for p in stored["passes"]]
    assert load_stored_spec(spec.model_dump(mode="json", exclude_unset=True)) == spec


@pytest.mark.parametrize("name", ["dynamic_weights_only", "dynamic_weights_only.full"])
def test_weights_only_becomes_the_int8_weight_only_method(name: str) -> None:
    spec = load_stored_spec(json.loads((FIXTURES / f"{name}.json").read_text()))

    (quantize,) = spec.passes
    assert quantize.model_dump(include={"method", "scope"}) == {
        "method": "int8_weight_only",
        "scope": "full",
    }


def test_weights_only_keeps_its_selection_and_drops_unread_calibration() -> None:
    path = FIXTURES / "static_weights_only_per_channel.full.json"
    spec = load_stored_spec(json.loads(path.read_text()))

    (quantize,) = spec.passes
    dumped = quantize.model_dump()
    assert dumped["method"] == "int8_weight_only"
    assert dumped["scope"] == "partial"
    assert dumped["exclude"] == {"op_types": ["Conv"], "nodes": []}
    assert dumped["per_channel"] is True
    assert spec.dataset_ids() == []


def test_other_passes_load_unchanged() -> None:
    stored = json.loads((FIXTURES / "prune_distill.json").read_text())
    spec = load_stored_spec(stored)

    assert spec.model_dump(mode="json", exclude_unset=True)["passes"] == stored["passes"]


def test_a_new_spec_is_stored_with_its_version() -> None:
    spec = JobSpec.model_validate(
        {"model_id": "m", "passes": [{"kind": "quantize", "method": "fp16"}]}
    )

    assert spec.model_dump(mode="json", exclude_unset=True)["spec_version"] == 2


def test_the_old_spelling_is_not_accepted_in_a_new_spec() -> None:
    with pytest.raises(ValueError, match="weights_only"):
        JobSpec.model_validate(
            {
                "model_id": "m",
                "passes": [
                    {
                        "kind": "quantize",
                        "method": "dynamic",
                        "scope": "partial",
                        "weights_only": True,
                    }
                ],
            }
        )
