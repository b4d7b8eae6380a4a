"""Every registered pass has an implementation and every config survives JSON."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from optimizers.config import (
    BenchmarkConfig,
    EvaluateConfig,
    PassConfig,
    PipelineSpec,
    parse_pass,
)
from optimizers.registry import pass_config_types, registered_passes
from tests.optimizers.helpers import quantize_config

#: One valid example per pass kind; a new pass without an example fails the test below.
EXAMPLES: dict[str, list[dict[str, Any]]] = {
    "quantize": [
        {"method": "dynamic", "per_channel": True, "weight_type": "uint8"},
        {
            "method": "static",
            "format": "qoperator",
            "activation_type": "int8",
            "calibration": {"dataset_id": "cal", "samples": 64, "method": "entropy"},
        },
        {"method": "fp16", "scope": "partial", "exclude": {"op_types": ["Softmax"]}},
        {"method": "int8_weight_only", "per_channel": True},
        {"method": "int4_weight_only", "block_size": 64, "symmetric": False},
    ],
    "prune": [
        {"method": "magnitude", "sparsity": 0.6, "granularity": "layer"},
        {
            "method": "structured",
            "ratio": 0.3,
            "importance": "l1",
            "exclude_layers": ["/conv1/Conv"],
            "finetune": {"dataset_id": "ft", "epochs": 2, "patience": None},
        },
    ],
    "graph_optimize": [{}, {"level": "extended", "transformer_fusions": True}],
    "distill": [
        {"dataset_id": "tr", "student": {"derive": "width", "ratio": 0.25}, "alpha": 0.9},
        {"dataset_id": "tr", "student": {"model_id": "mdl_1"}, "temperature": 2.0},
    ],
    "auto": [
        {
            "dataset_id": "ds",
            "objective": "balanced",
            "metric": "fidelity",
            "budget": {"trials": 12, "minutes": 5},
            "allow": ["quantize", "prune"],
            "device": "cuda",
        },
    ],
}


def test_every_registered_config_has_an_implementation() -> None:
    implemented = registered_passes()
    assert pass_config_types(), "no pass config registered"
    for config_type in pass_config_types():
        assert config_type in implemented, f"{config_type.__name__} has no implementation"


@pytest.mark.parametrize("config_type", pass_config_types(), ids=lambda c: c.__name__)
def test_configs_round_trip_through_json(config_type: type[PassConfig]) -> None:
    kind = config_type.model_fields["kind"].default
    examples = [
        parse_pass({"kind": kind, **example})
        for example in EXAMPLES.get(kind, [])
        if type(parse_pass({"kind": kind, **example})) is config_type
    ]
    assert examples, f"add an example config for {config_type.__name__}"
    for config in examples:
        assert config_type.model_validate_json(config.model_dump_json()) == config


def test_spec_round_trips_through_json() -> None:
    spec = PipelineSpec(
        passes=[quantize_config(EXAMPLES["quantize"][1])],
        evaluate=EvaluateConfig(dataset_id="ev", metric="accuracy", max_drop=0.02),
        benchmark=BenchmarkConfig(batch_sizes=[8, 1], input_shapes={"x": [1, 16]}),
    )
    assert spec.benchmark.batch_sizes == [1, 8]
    assert PipelineSpec.model_validate_json(spec.model_dump_json()) == spec


def test_api_facing_modules_do_not_import_torch_or_onnxruntime() -> None:
    code = (
        "import sys\n"
        "import optimizers.config, optimizers.errors, optimizers.results, optimizers.registry\n"
        "import optimizers.model_info, optimizers.datasets, optimizers.checks\n"
        "print(sorted(m for m in ('torch', 'onnxruntime') if m in sys.modules))\n"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"kind": "prune", "method": "structured", "sparsity": 0.3}, "apply to method 'magnitude'"),
        ({"kind": "prune", "method": "magnitude", "ratio": 0.3}, "apply to method 'structured'"),
        ({"kind": "distill", "dataset_id": "d", "student": {}}, "exactly one of"),
        (
            {"kind": "distill", "dataset_id": "d", "student": {"model_id": "m", "ratio": 0.25}},
            "applies to a derived student",
        ),
    ],
)
def test_inconsistent_prune_and_distill_configs_are_refused(
    config: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        PipelineSpec.model_validate({"passes": [config]})


def test_two_four_sparsity_needs_a_cuda_benchmark() -> None:
    passes = [{"kind": "prune", "method": "2:4"}]
    with pytest.raises(ValueError, match=r"set benchmark\.device to 'cuda'"):
        PipelineSpec.model_validate({"passes": passes})
    spec = PipelineSpec.model_validate({"passes": passes, "benchmark": {"device": "cuda"}})
    assert spec.passes[0].kind == "prune"
