"""Models with the input layouts real exporters write: sequences with a symbolic length,
and a streaming model whose recurrent state has its batch on axis 1 and a scalar input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.optimizers.helpers import save_npz


def make_sequence_model(path: Path, *, features: int = 8, reduce: bool = True) -> Path:
    """x[N, "seq", features] -> ReduceMean over seq -> y[N, features]: a symbolic non-batch
    dim. With reduce=False: Relu, y[N, "seq", features], an output that is no classifier."""
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    node = (
        helper.make_node("ReduceMean", ["x", "axes"], ["y"], keepdims=0)
        if reduce
        else helper.make_node("Relu", ["x"], ["y"])
    )
    out_shape: list[str | int] = ["N", features] if reduce else ["N", "seq", features]
    graph = helper.make_graph(
        [node],
        "seq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "seq", features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        initializer=[axes] if reduce else [],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def make_streaming_model(path: Path, *, batch: int | str = -1, samples: int = 64) -> Path:
    """A streaming model as audio exporters write them: audio[batch, samples], a recurrent
    state[2, batch, 32] whose batch is axis 1, and a scalar int64 sample rate sr[]. Outputs
    prob[batch, 4] (first) and the next state[2, batch, 32]. `batch` -1 is how some
    converters write a dynamic dimension; a name makes the state's batch axis recognizable."""
    rng = np.random.default_rng(0)

    def weight(name: str, *shape: int) -> onnx.TensorProto:
        values = rng.standard_normal(shape) * 0.5 / np.sqrt(shape[0])
        return numpy_helper.from_array(values.astype(np.float32), name)

    nodes = [
        helper.make_node("MatMul", ["audio", "w_in"], ["projected"], name="proj_in"),
        helper.make_node("ReduceMean", ["state", "axis0"], ["memory"], keepdims=0, name="mem"),
        helper.make_node("Cast", ["sr"], ["sr_float"], to=TensorProto.FLOAT, name="sr_cast"),
        helper.make_node("Div", ["sr_float", "reference_rate"], ["rate"], name="rate"),
        helper.make_node("Mul", ["memory", "rate"], ["scaled"], name="scale"),
        helper.make_node("Add", ["projected", "scaled"], ["mixed"], name="mix"),
        helper.make_node("Tanh", ["mixed"], ["hidden"], name="tanh"),
        helper.make_node("MatMul", ["hidden", "w_out"], ["prob"], name="proj_out"),
        helper.make_node("Unsqueeze", ["hidden", "axis0"], ["layer"], name="layer"),
        helper.make_node("Concat", ["layer", "layer"], ["next_state"], axis=0, name="stack"),
    ]
    graph = helper.make_graph(
        nodes,
        "streaming",
        [
            helper.make_tensor_value_info("audio", TensorProto.FLOAT, [batch, samples]),
            helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, batch, 32]),
            helper.make_tensor_value_info("sr", TensorProto.INT64, []),
        ],
        [
            helper.make_tensor_value_info("prob", TensorProto.FLOAT, [batch, 4]),
            helper.make_tensor_value_info("next_state", TensorProto.FLOAT, [2, batch, 32]),
        ],
        initializer=[
            weight("w_in", samples, 32),
            weight("w_out", 32, 4),
            numpy_helper.from_array(np.array([0], np.int64), "axis0"),
            numpy_helper.from_array(np.array(16000.0, np.float32), "reference_rate"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def streaming_dataset(path: Path, *, samples: int = 24, seed: int = 0) -> Path:
    """Rows for make_streaming_model: audio and state per sample (the state's sample axis
    first, [N, 2, 32]), the sample rate given once as a scalar."""
    rng = np.random.default_rng(seed)
    return save_npz(
        path,
        audio=rng.standard_normal((samples, 64)).astype(np.float32),
        state=rng.standard_normal((samples, 2, 32)).astype(np.float32),
        sr=np.array(16000, np.int64),
    )
