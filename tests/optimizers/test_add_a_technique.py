"""Adding a technique is one config class and one function: registered, the job spec the API
validates accepts it, the pipeline runs it and its report is in the result."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Literal

import pytest
from pydantic import Field, ValidationError

from core.jobspec import JobSpec
from optimizers.config import PassConfig
from optimizers.pipeline import run_pipeline
from optimizers.results import PassContext, PassResult


def copy_model(model_path: Path, config: Any, ctx: PassContext) -> PassResult:
    """The throwaway technique: the model unchanged, with a report of its own."""
    ctx.workdir.mkdir(parents=True, exist_ok=True)
    output = shutil.copyfile(model_path, ctx.workdir / "copy.onnx")
    return PassResult(model_path=Path(output), notes=["copied"], details={"label": config.label})


@pytest.fixture
def technique() -> Iterator[type[PassConfig]]:
    class CopyConfig(PassConfig):
        kind: Literal["copy_for_test"] = "copy_for_test"
        apply: ClassVar[str] = f"{__name__}:copy_model"
        label: str = Field(max_length=8)

    yield CopyConfig
    del PassConfig.registry["copy_for_test"]


def test_a_registered_technique_is_validated_run_and_reported(
    technique: type[PassConfig], mlp: Path, tmp_path: Path
) -> None:
    raw = {"model_id": "m", "passes": [{"kind": "copy_for_test", "label": "hello"}]}
    spec = JobSpec.model_validate(raw)
    with pytest.raises(ValidationError) as bad:
        JobSpec.model_validate({**raw, "passes": [{"kind": "copy_for_test", "label": "x" * 9}]})
    assert bad.value.errors()[0]["loc"] == ("passes", 0, "copy_for_test", "label")

    spec.benchmark.iterations, spec.benchmark.warmup = 2, 0
    result = run_pipeline(model_path=mlp, spec=spec, datasets={}, workdir=tmp_path)

    (entry,) = result.passes
    assert entry["kind"] == "copy_for_test"
    assert entry["details"] == {"label": "hello"}
    assert "copied" in result.notes or "copied" in entry.get("notes", [])


def test_an_unregistered_kind_is_refused() -> None:
    with pytest.raises(ValidationError, match="copy_for_test"):
        JobSpec.model_validate({"model_id": "m", "passes": [{"kind": "copy_for_test"}]})
