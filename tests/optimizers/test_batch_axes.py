"""Models from other exporters: dynamic dims written as -1, inputs whose batch is not on axis
0, inputs with no batch at all. One rule decides each input's batch axis, and checks,
calibration, evaluation and the benchmark all follow it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from optimizers.batching import batch_layout
from optimizers.checks import check_spec
from optimizers.config import PipelineSpec
from optimizers.datasets import inspect_dataset, iter_feeds
from optimizers.errors import DatasetMismatchError, UnsupportedError
from optimizers.measure.benchmark import make_feeds
from optimizers.model_info import inspect_model
from optimizers.pipeline import run_pipeline
from optimizers.results import ModelInfo
from tests.models.onnx_basic import make_mlp
from tests.models.sequences import make_streaming_model, streaming_dataset
from tests.optimizers.helpers import save_npz

FAST_BENCHMARK: dict[str, Any] = {"batch_sizes": [1, 4], "warmup": 1, "iterations": 4}
#: How a user settles the streaming model's inputs when its dims are written -1.
STREAMING_INPUTS = {"state": {"batch_axis": 1}, "sr": {"batch_axis": None}}


def _spec(**fields: Any) -> PipelineSpec:
    return PipelineSpec.model_validate(
        {"passes": [{"kind": "quantize", "method": "dynamic"}]} | fields
    )


def test_minus_one_is_a_dynamic_dimension(tmp_path: Path) -> None:
    model = inspect_model(make_mlp(tmp_path / "tf.onnx", batch=-1))
    assert model.inputs[0].shape == [None, 16]
    assert model.outputs[0].shape == [None, 4]
    # A description stored with -1 (or 0) before is read the same way.
    stored = ModelInfo.model_validate(
        model.model_dump() | {"inputs": [{"name": "x", "dtype": "float32", "shape": [-1, 16]}]}
    )
    assert stored.inputs[0].shape == [None, 16]
    assert ModelInfo.model_validate(
        model.model_dump() | {"inputs": [{"name": "x", "dtype": "float32", "shape": [0, 16]}]}
    ).inputs[0].shape == [None, 16]
    check_spec(model, _spec(benchmark={"batch_sizes": [1, 8]}), {})


def test_each_input_gets_its_own_batch_axis(tmp_path: Path) -> None:
    named = inspect_model(make_streaming_model(tmp_path / "named.onnx", batch="batch"))
    # The state's dynamic axis shares its name with the audio's batch axis; sr is a scalar.
    assert batch_layout(named).axes == {"audio": 0, "state": 1, "sr": None}
    check_spec(named, _spec(benchmark={"batch_sizes": [1, 8]}), {})

    unnamed = inspect_model(make_streaming_model(tmp_path / "unnamed.onnx"))
    with pytest.raises(UnsupportedError) as refused:
        check_spec(unnamed, _spec(benchmark={"batch_sizes": [1, 8]}), {})
    assert "model input 'state'" in refused.value.message
    assert 'inputs["state"].batch_axis' in refused.value.message

    settled = _spec(inputs=STREAMING_INPUTS, benchmark={"batch_sizes": [1, 8]})
    check_spec(unnamed, settled, {})
    assert batch_layout(unnamed, settled.batch_axes()).axes == {
        "audio": 0,
        "state": 1,
        "sr": None,
    }


def test_declared_batch_axes_are_checked_against_the_model(tmp_path: Path) -> None:
    model = inspect_model(make_streaming_model(tmp_path / "s.onnx"))
    with pytest.raises(DatasetMismatchError, match=r"inputs names \['states'\]"):
        check_spec(model, _spec(inputs={"states": {"batch_axis": 1}}), {})
    with pytest.raises(DatasetMismatchError, match=r'inputs\["state"\].batch_axis is 3 .* rank 3'):
        check_spec(
            model, _spec(inputs={"state": {"batch_axis": 3}, "sr": {"batch_axis": None}}), {}
        )
    # A fixed size on the declared batch axis limits the batch sizes, and says how to settle it.
    with pytest.raises(UnsupportedError, match=r"fixed batch size of 2 .*inputs\[\"state\"\]"):
        check_spec(
            model,
            _spec(inputs={"state": {"batch_axis": 0}}, benchmark={"batch_sizes": [1, 8]}),
            {},
        )


def test_explicit_input_shapes_are_used_as_given(tmp_path: Path) -> None:
    model = inspect_model(make_streaming_model(tmp_path / "s.onnx", batch="batch"))
    spec = _spec(
        benchmark={"batch_sizes": [3], "input_shapes": {"state": [2, 1, 32], "sr": []}},
    )
    check_spec(model, spec, {})
    feeds = make_feeds(model, 3, dataset=None, input_shapes=spec.benchmark.input_shapes)
    assert {name: array.shape for name, array in feeds.items()} == {
        "audio": (3, 64),
        "state": (2, 3, 32),
        "sr": (),
    }
    with pytest.raises(DatasetMismatchError, match=r"input_shapes\['state'\] has 31 on axis 2"):
        check_spec(model, _spec(benchmark={"input_shapes": {"state": [2, 1, 31]}}), {})


def test_dataset_rows_follow_each_inputs_batch_axis(tmp_path: Path) -> None:
    path = make_streaming_model(tmp_path / "s.onnx", batch="batch")
    model = inspect_model(path)
    data = streaming_dataset(tmp_path / "d.npz", samples=10)
    info = inspect_dataset(data)
    assert info.num_samples == 10 and info.arrays["sr"].shape == []
    layout = batch_layout(model)
    batches = list(iter_feeds(data, model, layout, 4))
    assert [batch.rows for batch in batches] == [4, 4, 2]
    first = batches[0].feeds
    assert first["state"].shape == (2, 4, 32) and first["sr"].shape == ()
    with np.load(data) as arrays:
        np.testing.assert_array_equal(first["state"][:, 1], arrays["state"][1])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.run(None, first)[0].shape == (4, 4)
    # The same rows feed the benchmark, cycled up to the batch size.
    feeds = make_feeds(model, 12, dataset=data, input_shapes=None)
    assert feeds["state"].shape == (2, 12, 32)
    np.testing.assert_array_equal(feeds["audio"][10], feeds["audio"][0])


def test_a_per_sample_array_for_an_input_without_batch_is_refused(tmp_path: Path) -> None:
    model = inspect_model(make_streaming_model(tmp_path / "s.onnx", batch="batch"))
    rng = np.random.default_rng(0)
    data = save_npz(
        tmp_path / "d.npz",
        audio=rng.standard_normal((6, 64)).astype(np.float32),
        state=rng.standard_normal((6, 2, 32)).astype(np.float32),
        sr=np.full(6, 16000, np.int64),
    )
    spec = _spec(
        passes=[
            {"kind": "quantize", "method": "static", "calibration": {"dataset_id": "d"}},
        ]
    )
    with pytest.raises(DatasetMismatchError) as refused:
        check_spec(model, spec, {"d": inspect_dataset(data)})
    assert "'sr'" in refused.value.message and "given once" in refused.value.message


def test_training_passes_refuse_inputs_batched_elsewhere(tmp_path: Path) -> None:
    model = inspect_model(make_streaming_model(tmp_path / "s.onnx", batch="batch"))
    spec = PipelineSpec.model_validate(
        {"passes": [{"kind": "prune", "method": "magnitude"}], "inputs": STREAMING_INPUTS}
    )
    with pytest.raises(UnsupportedError, match="model input 'state' has its batch on axis 1"):
        check_spec(model, spec, {})


def test_streaming_model_quantized_evaluated_and_benchmarked(tmp_path: Path) -> None:
    model = make_streaming_model(tmp_path / "s.onnx")
    data = streaming_dataset(tmp_path / "d.npz")
    spec = PipelineSpec.model_validate(
        {
            "inputs": STREAMING_INPUTS,
            "passes": [
                {
                    "kind": "quantize",
                    "method": "static",
                    "calibration": {"dataset_id": "d", "samples": 16},
                }
            ],
            "evaluate": {"dataset_id": "d", "metric": "fidelity", "max_drop": 0.05},
            "benchmark": FAST_BENCHMARK | {"threads": 1},
        }
    )
    result = run_pipeline(model_path=model, spec=spec, datasets={"d": data}, workdir=tmp_path)
    assert result.passes[0]["details"]["quantized_nodes"] > 0
    assert result.passes[0]["sensitivity"]["status"] == "ok"
    metrics = result.metrics
    assert metrics["fidelity"]["samples"] == 24 and metrics["fidelity"]["cosine_mean"] > 0.95
    assert set(metrics["optimized"]["latency_ms"]) == {"1", "4"}
    inputs = metrics["benchmark"]["inputs"]
    assert inputs["source"] == "evaluate_dataset" and inputs["dataset_id"] == "d"
    assert inputs["batch_axes"] == {"audio": 0, "state": 1, "sr": None}


def test_exporter_style_model_is_pruned_and_benchmarked(tmp_path: Path) -> None:
    model = make_mlp(tmp_path / "tf.onnx", batch=-1)
    spec = PipelineSpec.model_validate(
        {
            "passes": [{"kind": "prune", "method": "structured", "ratio": 0.5}],
            "benchmark": FAST_BENCHMARK | {"threads": 1},
        }
    )
    result = run_pipeline(model_path=model, spec=spec, datasets={}, workdir=tmp_path)
    assert result.metrics["optimized"]["size_bytes"] < result.metrics["baseline"]["size_bytes"]
    bench = result.metrics["benchmark"]
    assert bench["inputs"]["shapes"] == {"1": {"x": [1, 16]}, "4": {"x": [4, 16]}}
    assert bench["inputs"]["seed"] == 0
    assert bench["session_options"]["config_entries"] == {"session.intra_op.allow_spinning": "0"}
    assert bench["session_options"]["intra_op_num_threads"] == 1
    assert bench["timing"]["order"] == "blocks"


def test_the_benchmark_record_rebuilds_the_same_inputs(tmp_path: Path) -> None:
    """What bench/verify_benchmark.py feeds from a job's record, with numpy alone, is what the
    benchmark fed: random inputs from the seed and shapes, or dataset rows."""
    from bench.verify_benchmark import recorded_feeds
    from optimizers.measure.stages import benchmark_inputs_record

    info = inspect_model(make_streaming_model(tmp_path / "s.onnx"))
    data = streaming_dataset(tmp_path / "d.npz", samples=5)
    spec = _spec(inputs=STREAMING_INPUTS, benchmark={"batch_sizes": [1, 8]})
    layout = batch_layout(info, spec.batch_axes())
    for dataset in (None, data):
        record = benchmark_inputs_record(
            info, spec, "d" if dataset else None, layout=layout, num_samples=5
        )
        # Stored as JSON: the record must survive it.
        stored = json.loads(json.dumps({"inputs": record}))
        for batch in (1, 8):
            fed = make_feeds(info, batch, dataset=dataset, input_shapes=None, layout=layout)
            rebuilt = recorded_feeds(stored, batch, dataset)
            assert set(rebuilt) == set(fed)
            for name, array in fed.items():
                assert rebuilt[name].dtype == array.dtype
                np.testing.assert_array_equal(rebuilt[name], array)
