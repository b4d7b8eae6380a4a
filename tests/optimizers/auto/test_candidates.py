"""The candidates per structure, and the specs of their trials."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import pytest

from optimizers.auto.candidates import candidates_for, graph_fallback, trial_spec
from optimizers.auto.preflight import auto_config
from optimizers.auto.search import next_trials, screening_pool
from optimizers.config import PipelineSpec
from tests.optimizers.auto.builders import auto_spec, plan_for


@pytest.mark.parametrize(
    ("structure", "objective", "device"),
    list(
        itertools.product(
            ["transformer", "cnn", "mlp", "unknown"],
            ["latency", "size", "balanced"],
            ["cpu", "cuda"],
        )
    ),
)
def test_every_candidate_spec_validates_at_both_rungs(
    structure: str, objective: str, device: str
) -> None:
    spec = auto_spec(objective=objective, device=device, batch_size=4)
    config = auto_config(spec)
    candidates = [graph_fallback(), *candidates_for(config, structure=structure, samples=1000)]
    assert len({c.stem for c in candidates}) == len(candidates)
    for candidate, rung in itertools.product(candidates, (0, 1)):
        data = trial_spec(
            spec,
            config,
            candidate.pass_list(),
            rung=rung,
            batch_size=4,
            samples=1000,
            metric="accuracy",
        )
        trial = PipelineSpec.model_validate(data)
        assert trial.benchmark.batch_sizes == [4]
        assert trial.benchmark.device == device
        assert trial.evaluate is not None and trial.evaluate.metric == "accuracy"
        assert trial.evaluate.samples == (256 if rung == 0 else None)
        assert trial.benchmark.iterations == (20 if rung == 0 else 100)


def test_transformers_get_the_static_preset_fusions_and_smoothquant_first() -> None:
    spec, pre = plan_for("transformer")
    stems = [c.stem for c in screening_pool(spec, pre)]
    assert stems[:4] == [
        "int8-static-tp",
        "int8-dynamic-pc",
        "int8-dynamic-sq",
        "fused-int8-dynamic-pc",
    ]
    pool = {c.stem: c for c in screening_pool(spec, pre)}
    assert pool["int8-static-tp"].passes[0]["preset"] == "transformer"
    fused = pool["fused-int8-dynamic-pc"].passes
    assert fused[0] == {"kind": "graph_optimize", "level": "basic", "transformer_fusions": True}
    assert fused[1]["method"] == "dynamic"
    assert "int4-wo" in pool and "prune-s25" in pool and "distill-w50" in pool


def test_cnns_get_static_int8_with_each_calibration_method() -> None:
    spec, pre = plan_for("cnn")
    pool = screening_pool(spec, pre)
    static = [c for c in pool if c.family == "int8_static"]
    assert static[0].stem == "int8-static-pc"  # the first screened
    methods = {c.passes[0]["calibration"]["method"] for c in static}
    assert methods == {"minmax", "entropy", "percentile"}
    assert {c.passes[0]["per_channel"] for c in static} == {True, False}
    assert not any(c.family == "int4_weight_only" for c in pool)
    assert [c.passes[0]["ratio"] for c in pool if c.family == "prune_structured"] == [0.25, 0.5]
    prune = next(c for c in pool if c.family == "prune_structured")
    assert prune.passes[0]["finetune"] == {"dataset_id": "d"}


def test_mlps_get_dynamic_int8_first() -> None:
    spec, pre = plan_for("mlp")
    stems = [c.stem for c in screening_pool(spec, pre)]
    assert stems[:2] == ["int8-dynamic-pt", "int8-dynamic-pc"]
    assert "fused-int8-dynamic-pc" not in stems


def test_trials_carry_the_parents_inputs() -> None:
    spec = PipelineSpec.model_validate(
        {"passes": [{"kind": "auto", "dataset_id": "d"}], "inputs": {"x": {"batch_axis": 0}}}
    )
    _, pre = plan_for("transformer")
    plans = next_trials(spec, pre, [], budget_left=24)
    assert all(plan.spec["inputs"] == {"x": {"batch_axis": 0}} for plan in plans)
    assert all("model_id" not in plan.spec for plan in plans)


def test_search_modules_import_neither_torch_nor_onnxruntime_nor_onnx() -> None:
    code = (
        "import sys\n"
        "import optimizers.auto, optimizers.auto.preflight, optimizers.auto.candidates\n"
        "import optimizers.auto.search, optimizers.auto.answer, optimizers.auto.trials\n"
        "print(sorted(m for m in ('torch', 'onnxruntime', 'onnx') if m in sys.modules))\n"
    )
    root = Path(__file__).resolve().parents[3]
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
