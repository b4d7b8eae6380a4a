"""The search policy on a real export: the bench transformer encoder, described as an upload
is, gets the transformer candidates, and every screening spec passes the submission checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from optimizers.auto.preflight import preflight
from optimizers.auto.search import next_trials
from optimizers.checks import check_spec
from optimizers.config import PipelineSpec
from optimizers.datasets import inspect_dataset
from optimizers.model_info import inspect_model


def test_the_bench_encoder_is_searched_as_a_transformer(tmp_path: Path) -> None:
    from bench.models import MODELS, export_model

    bench = MODELS["transformer"]
    model = inspect_model(export_model(bench, tmp_path / "encoder.onnx"))
    rng = np.random.default_rng(0)
    inputs = rng.standard_normal((40, *bench.sample_shape)).astype(np.float32)
    np.savez(tmp_path / "data.npz", **{bench.input_name: inputs, "labels": np.arange(40) % 10})
    datasets = {"d": inspect_dataset(tmp_path / "data.npz")}
    spec = PipelineSpec.model_validate({"passes": [{"kind": "auto", "dataset_id": "d"}]})

    pre = preflight(model, datasets, spec, live_queues=["cpu"])
    assert pre.structure == "transformer"
    assert pre.facts["refused"] == {}
    assert {"int8_static_transformer", "fused+int8_dynamic", "prune_structured"} <= set(
        pre.applicable
    )
    plans = next_trials(spec, pre, [], budget_left=24)
    assert [p.key for p in plans[:2]] == ["graph-r1", "int8-static-tp-r0"]
    for plan in plans:
        check_spec(model, PipelineSpec.model_validate(plan.spec), datasets)
