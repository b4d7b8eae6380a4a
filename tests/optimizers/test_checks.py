from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from optimizers.checks import check_spec
from optimizers.config import PipelineSpec
from optimizers.datasets import inspect_dataset
from optimizers.errors import DatasetMismatchError, UnsupportedError
from optimizers.model_info import inspect_model
from tests.models.onnx_basic import make_cnn, make_mlp
from tests.models.sequences import make_sequence_model
from tests.optimizers.helpers import save_npz


def _spec(**fields: Any) -> PipelineSpec:
    return PipelineSpec.model_validate(
        {"passes": [{"kind": "quantize", "method": "dynamic"}], **fields}
    )


def test_fixed_batch_allows_only_that_batch_size(tmp_path: Path) -> None:
    model = inspect_model(make_cnn(tmp_path / "cnn.onnx", batch=1, size=8))
    check_spec(model, _spec(benchmark={"batch_sizes": [1]}), {})
    with pytest.raises(UnsupportedError, match="fixed batch size of 1") as exc:
        check_spec(model, _spec(benchmark={"batch_sizes": [1, 8]}), {})
    assert "[1]" in exc.value.message


def test_symbolic_dims_need_shapes_from_somewhere(tmp_path: Path) -> None:
    model = inspect_model(make_sequence_model(tmp_path / "seq.onnx"))
    with pytest.raises(DatasetMismatchError, match=r"symbolic dims .*input_shapes"):
        check_spec(model, _spec(), {})
    check_spec(model, _spec(benchmark={"input_shapes": {"x": [1, 12, 8]}}), {})

    data = inspect_dataset(save_npz(tmp_path / "d.npz", x=np.zeros((4, 5, 8), np.float32)))
    calibrated = PipelineSpec.model_validate(
        {"passes": [{"kind": "quantize", "method": "static", "calibration": {"dataset_id": "d"}}]}
    )
    check_spec(model, calibrated, {"d": data})
    check_spec(model, _spec(evaluate={"dataset_id": "d", "metric": "fidelity"}), {"d": data})


@pytest.mark.parametrize(
    ("shapes", "message"),
    [
        ({"y": [1, 4, 8]}, "not model inputs"),
        ({"x": [1, 8]}, "rank 2"),
        ({"x": [1, 4, 9]}, "9 on axis 2 but the model input needs 8"),
    ],
)
def test_bad_input_shapes_are_rejected(
    tmp_path: Path, shapes: dict[str, list[int]], message: str
) -> None:
    model = inspect_model(make_sequence_model(tmp_path / "seq.onnx"))
    with pytest.raises(DatasetMismatchError, match=message):
        check_spec(model, _spec(benchmark={"input_shapes": shapes}), {})


def test_every_referenced_dataset_must_fit(tmp_path: Path) -> None:
    model = inspect_model(make_mlp(tmp_path / "m.onnx", hidden=8))
    good = inspect_dataset(save_npz(tmp_path / "g.npz", x=np.zeros((4, 16), np.float32)))
    wrong = inspect_dataset(save_npz(tmp_path / "w.npz", x=np.zeros((4, 15), np.float32)))
    static = {"kind": "quantize", "method": "static", "calibration": {"dataset_id": "cal"}}

    spec = PipelineSpec.model_validate({"passes": [static], "evaluate": {"dataset_id": "ev"}})
    check_spec(model, spec, {"cal": good, "ev": good})
    with pytest.raises(DatasetMismatchError, match="quantize pass dataset"):
        check_spec(model, spec, {"cal": wrong, "ev": good})
    with pytest.raises(DatasetMismatchError, match="evaluate dataset"):
        check_spec(model, spec, {"cal": good, "ev": wrong})
    with pytest.raises(DatasetMismatchError, match="'ev' was not found"):
        check_spec(model, spec, {"cal": good})

    accuracy = _spec(evaluate={"dataset_id": "ev", "metric": "accuracy"})
    with pytest.raises(DatasetMismatchError, match="no 'labels'"):
        check_spec(model, accuracy, {"ev": good})


def test_cuda_is_left_to_the_worker(tmp_path: Path) -> None:
    model = inspect_model(make_mlp(tmp_path / "m.onnx", hidden=8))
    check_spec(model, _spec(benchmark={"device": "cuda"}), {})


def test_per_channel_accepts_opset_12_and_rejects_opset_9(tmp_path: Path) -> None:
    per_channel = PipelineSpec.model_validate(
        {"passes": [{"kind": "quantize", "method": "dynamic", "per_channel": True}]}
    )
    # Opset 12 is upgraded to 13 by the pass, so it is accepted before queueing.
    check_spec(inspect_model(make_mlp(tmp_path / "m12.onnx", hidden=8, opset=12)), per_channel, {})
    too_old = inspect_model(make_mlp(tmp_path / "m9.onnx", hidden=8, opset=9))
    with pytest.raises(UnsupportedError, match="opset 10 or newer") as exc:
        check_spec(too_old, per_channel, {})
    assert "opset 9" in exc.value.message
