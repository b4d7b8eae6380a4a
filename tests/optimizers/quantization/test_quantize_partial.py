"""Partial scope: `include` / `exclude` pick the nodes that are quantized."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from optimizers.errors import QuantizationError
from optimizers.registry import run_pass
from optimizers.results import PassContext
from tests.models.onnx_basic import make_cnn, make_dataset
from tests.optimizers.helpers import cosine, quantize_config, weight_is_float


def _run(model: Path, data: Path | None, tmp_path: Path, **fields: Any) -> Any:
    config = quantize_config({"scope": "partial", **fields})
    ctx = PassContext(workdir=tmp_path / "work", datasets={"cal": data} if data else {})
    return run_pass(model, config, ctx)


def _close(original: Path, quantized: Path, data: Path, name: str) -> float:
    feeds = {name: np.load(data)[name][:16]}
    a = ort.InferenceSession(str(original), providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(str(quantized), providers=["CPUExecutionProvider"])
    return cosine(a.run(None, feeds)[0], b.run(None, feeds)[0])


def test_dynamic_exclude_by_name_keeps_those_nodes_float(
    tmp_path: Path, mlp: Path, mlp_data: Path
) -> None:
    result = _run(mlp, None, tmp_path, method="dynamic", exclude={"nodes": ["fc1"]})

    assert weight_is_float(result.model_path, "fc1")
    assert not weight_is_float(result.model_path, "fc2")
    assert result.details["excluded_nodes"] == ["fc1"]
    assert result.details["quantized_nodes"] > 0
    assert any("node names" in note for note in result.notes)
    assert _close(mlp, result.model_path, mlp_data, "x") > 0.98


def test_static_include_op_types_quantizes_only_those(tmp_path: Path) -> None:
    model = make_cnn(tmp_path / "cnn.onnx", width=16)
    data = make_dataset(tmp_path / "cnn.npz", model, samples=8)
    result = _run(
        model,
        data,
        tmp_path,
        method="static",
        include={"op_types": ["Conv"]},
        calibration={"dataset_id": "cal", "samples": 8},
    )

    assert not weight_is_float(result.model_path, "conv1")
    assert not weight_is_float(result.model_path, "conv2")
    assert weight_is_float(result.model_path, "fc")
    # Every other op type that static QDQ would quantize is reported as left in float.
    excluded = result.details["excluded_nodes"]
    assert "fc" in excluded and "relu1" in excluded
    assert "conv1" not in excluded and "conv2" not in excluded
    assert _close(model, result.model_path, data, "image") > 0.98


def test_include_is_a_union_of_op_types_and_names(tmp_path: Path, mlp: Path) -> None:
    model = make_cnn(tmp_path / "cnn.onnx", width=16)
    result = _run(
        model,
        None,
        tmp_path,
        method="dynamic",
        include={"op_types": ["Gemm"], "nodes": ["conv1"]},
        exclude={"op_types": ["Relu"]},
    )
    assert not weight_is_float(result.model_path, "conv1")
    assert weight_is_float(result.model_path, "conv2")
    assert set(result.details["excluded_nodes"]) == {"conv2", "relu1", "relu2"}


def test_unknown_node_names_are_named_in_the_error(tmp_path: Path, mlp: Path) -> None:
    with pytest.raises(QuantizationError, match="no node named 'fc9'") as exc:
        _run(mlp, None, tmp_path, method="dynamic", exclude={"nodes": ["fc1", "fc9"]})
    assert "'fc1'" in exc.value.message  # valid names are listed


def test_op_types_not_in_the_model_are_rejected(tmp_path: Path, mlp: Path) -> None:
    with pytest.raises(QuantizationError, match=r"include\.op_types names 'Conv'") as exc:
        _run(mlp, None, tmp_path, method="dynamic", include={"op_types": ["Conv"]})
    assert "'MatMul'" in exc.value.message


def test_dynamic_exclude_keeps_a_gemm_float(tmp_path: Path) -> None:
    # onnxruntime's dynamic quantizer rewrites each Gemm as a MatMul named `<gemm>_MatMul`
    # before it reads the exclusions: a Gemm excluded by its own name must stay float too
    # (the mixed-precision loop of an MLP keeps its Gemm layers float this way).
    model = make_cnn(tmp_path / "cnn.onnx", width=16)
    data = make_dataset(tmp_path / "cnn.npz", model, samples=8)
    result = _run(model, None, tmp_path, method="dynamic", exclude={"nodes": ["fc"]})

    ops = {node.op_type for node in onnx.load(str(result.model_path)).graph.node}
    assert "MatMulInteger" not in ops and "ConvInteger" in ops
    assert result.details["excluded_nodes"] == ["fc"]
    assert _close(model, result.model_path, data, "image") > 0.98


def test_dynamic_per_node_float_keeps_a_gemm_float(tmp_path: Path) -> None:
    # `per_node` goes around the selection: its Gemm must follow the dynamic quantizer's
    # rename too, or the node the spec keeps float is quantized after all.
    model = make_cnn(tmp_path / "cnn.onnx", width=16)
    data = make_dataset(tmp_path / "cnn.npz", model, samples=8)
    config = quantize_config({"method": "dynamic", "per_node": {"fc": "float"}})
    result = run_pass(model, config, PassContext(workdir=tmp_path / "work", datasets={}))

    ops = {node.op_type for node in onnx.load(str(result.model_path)).graph.node}
    assert "MatMulInteger" not in ops and "ConvInteger" in ops
    assert _close(model, result.model_path, data, "image") > 0.98
