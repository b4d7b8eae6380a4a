"""Tiny ONNX models with real-world shapes (control flow, RNNs, dynamic dims, large values,
external data) for the quantization tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _save(
    path: Path,
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    initializers: list[onnx.TensorProto],
    *,
    opset: int = 17,
) -> Path:
    graph = helper.make_graph(nodes, path.stem, inputs, outputs, initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def make_overflowing_mlp(path: Path, *, features: int = 16, seed: int = 0) -> Path:
    """x[N, 16] -> MatMul 'big' (weights 3e4, all < 65504) -> Relu 'relu' -> Mul 'shrink'
    (1e-3) -> MatMul 'head' -> y[N, 4]. In float32 every value is finite; 'big' produces ~1e5,
    beyond float16's range, so a plain float16 conversion gives inf. (A Mul right after the
    MatMul would be fused into it by onnxruntime and hide the overflow.)"""
    rng = np.random.default_rng(seed)
    big = (np.sign(rng.standard_normal((features, 8))) * 30000).astype(np.float32)
    head = (rng.standard_normal((8, 4)) * 0.3).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "big_w"], ["h"], name="big"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("Mul", ["r", "scale"], ["a"], name="shrink"),
        helper.make_node("MatMul", ["a", "head_w"], ["y"], name="head"),
    ]
    inits = [
        numpy_helper.from_array(big, "big_w"),
        numpy_helper.from_array(np.array(1e-3, np.float32), "scale"),
        numpy_helper.from_array(head, "head_w"),
    ]
    return _save(
        path,
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        inits,
    )


def make_large_constant_model(path: Path, *, features: int = 16, seed: int = 0) -> Path:
    """x[N, 16] -> Div 'div' by 2e5 (a constant float16 cannot hold) -> Mul 'rescale' by
    1e4 -> MatMul 'fc' -> y[N, 4]; every activation stays within the float16 range."""
    rng = np.random.default_rng(seed)
    nodes = [
        helper.make_node("Div", ["x", "divisor"], ["d"], name="div"),
        helper.make_node("Mul", ["d", "gain"], ["g"], name="rescale"),
        helper.make_node("MatMul", ["g", "w"], ["y"], name="fc"),
    ]
    inits = [
        numpy_helper.from_array(np.array(2e5, np.float32), "divisor"),
        numpy_helper.from_array(np.array(1e4, np.float32), "gain"),
        numpy_helper.from_array(rng.standard_normal((features, 4)).astype(np.float32), "w"),
    ]
    return _save(
        path,
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        inits,
    )


def save_with_external_data(source: Path, path: Path, *, location: str = "weights.bin") -> Path:
    """Copy of `source` at `path` with every tensor in one external file beside it, as
    exporters write models too large for one protobuf (torch.onnx, optimum)."""
    model = onnx.load(str(source))
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=location,
        size_threshold=0,
    )
    return path


def make_dynamic_cnn(path: Path, *, channels: int = 3, width: int = 8, seed: int = 0) -> Path:
    """image[N, 3, H, W] (every dim symbolic but the channels) -> Conv/Relu -> strided
    Conv/Relu -> GlobalAveragePool -> Flatten -> Gemm -> logits[N, 4]."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(_scaled(rng, width, channels, 3, 3), "c1_w"),
        numpy_helper.from_array(rng.standard_normal(width).astype(np.float32) * 0.1, "c1_b"),
        numpy_helper.from_array(_scaled(rng, width, width, 3, 3), "c2_w"),
        numpy_helper.from_array(rng.standard_normal(width).astype(np.float32) * 0.1, "c2_b"),
        numpy_helper.from_array(_scaled(rng, 4, width), "fc_w"),
        numpy_helper.from_array(np.zeros(4, np.float32), "fc_b"),
    ]
    nodes = [
        helper.make_node("Conv", ["image", "c1_w", "c1_b"], ["c1"], name="conv1", pads=[1] * 4),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node(
            "Conv", ["r1", "c2_w", "c2_b"], ["c2"], name="conv2", pads=[1] * 4, strides=[2, 2]
        ),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], name="fc", transB=1),
    ]
    return _save(
        path,
        nodes,
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", channels, "H", "W"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])],
        inits,
    )


def make_sequence_encoder(path: Path, *, features: int = 16, seed: int = 0) -> Path:
    """x[N, seq, 16] -> MatMul/Add/Relu per token -> ReduceMean over seq -> MatMul ->
    y[N, 4]: a symbolic sequence length, as text and audio models have."""
    rng = np.random.default_rng(seed)
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="proj"),
        helper.make_node("Add", ["h", "b1"], ["hb"], name="proj_bias"),
        helper.make_node("Relu", ["hb"], ["a"], name="relu"),
        helper.make_node("ReduceMean", ["a", "axes"], ["pooled"], name="pool", keepdims=0),
        helper.make_node("MatMul", ["pooled", "w2"], ["y"], name="head"),
    ]
    inits = [
        numpy_helper.from_array(_scaled(rng, features, 32), "w1"),
        numpy_helper.from_array(rng.standard_normal(32).astype(np.float32) * 0.1, "b1"),
        numpy_helper.from_array(np.array([1], np.int64), "axes"),
        numpy_helper.from_array(_scaled(rng, 32, 4), "w2"),
    ]
    return _save(
        path,
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "seq", features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        inits,
        opset=18,
    )


def make_if_model(path: Path, *, features: int = 16, seed: int = 0) -> Path:
    """x[N, 16] -> If (sum(x) > 0): then MatMul 'then_fc' / else MatMul 'else_fc' + Relu,
    both reading x and weights from the outer graph -> MatMul 'head' -> y[N, 4]."""
    rng = np.random.default_rng(seed)
    then_branch = helper.make_graph(
        [helper.make_node("MatMul", ["x", "then_w"], ["then_out"], name="then_fc")],
        "then",
        [],
        [helper.make_tensor_value_info("then_out", TensorProto.FLOAT, ["N", 32])],
    )
    else_branch = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "else_w"], ["else_mm"], name="else_fc"),
            helper.make_node("Relu", ["else_mm"], ["else_out"], name="else_relu"),
        ],
        "else",
        [],
        [helper.make_tensor_value_info("else_out", TensorProto.FLOAT, ["N", 32])],
    )
    nodes = [
        helper.make_node("ReduceSum", ["x"], ["total"], name="total", keepdims=0),
        helper.make_node("Greater", ["total", "zero"], ["positive"], name="positive"),
        helper.make_node(
            "If",
            ["positive"],
            ["branch"],
            name="branch",
            then_branch=then_branch,
            else_branch=else_branch,
        ),
        helper.make_node("MatMul", ["branch", "head_w"], ["y"], name="head"),
    ]
    inits = [
        numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        numpy_helper.from_array(_scaled(rng, features, 32), "then_w"),
        numpy_helper.from_array(_scaled(rng, features, 32), "else_w"),
        numpy_helper.from_array(_scaled(rng, 32, 4), "head_w"),
    ]
    return _save(
        path,
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        inits,
    )


def make_loop_model(path: Path, *, features: int = 16, steps: int = 3, seed: int = 0) -> Path:
    """x[N, 16] -> Loop 'refine' (3 steps of h = tanh(h @ W + x) in its body, W from the
    outer graph) -> MatMul 'head' -> y[N, 4]: a recurrence unrolled by a Loop, as exported
    by torch.jit.script models."""
    rng = np.random.default_rng(seed)
    body = helper.make_graph(
        [
            helper.make_node("MatMul", ["h_in", "step_w"], ["mixed"], name="step_fc"),
            helper.make_node("Add", ["mixed", "x"], ["summed"], name="step_add"),
            helper.make_node("Tanh", ["summed"], ["h_out"], name="step_tanh"),
            helper.make_node("Identity", ["cond_in"], ["cond_out"], name="step_cond"),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("h_in", TensorProto.FLOAT, ["N", features]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("h_out", TensorProto.FLOAT, ["N", features]),
        ],
    )
    nodes = [
        helper.make_node("Loop", ["steps", "keep_going", "x"], ["h"], name="refine", body=body),
        helper.make_node("MatMul", ["h", "head_w"], ["y"], name="head"),
    ]
    inits = [
        numpy_helper.from_array(np.array(steps, np.int64), "steps"),
        numpy_helper.from_array(np.array(True), "keep_going"),
        numpy_helper.from_array(_scaled(rng, features, features), "step_w"),
        numpy_helper.from_array(_scaled(rng, features, 4), "head_w"),
    ]
    return _save(
        path,
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        inits,
    )


def make_lstm_model(path: Path, *, features: int = 8, hidden: int = 16, seed: int = 0) -> Path:
    """x[N, seq, 8], h0[N, 16], c0[N, 16] -> Transpose to time-major -> LSTM 'lstm'
    (initial_h/initial_c from the graph inputs) -> last hidden state -> MatMul 'head' ->
    y[N, 4]. The state inputs are batch-major, so a dataset can hold them row by row."""
    rng = np.random.default_rng(seed)
    gates = 4 * hidden
    nodes = [
        helper.make_node("Transpose", ["x"], ["x_t"], name="time_major", perm=[1, 0, 2]),
        helper.make_node("Unsqueeze", ["h0", "zero_axis"], ["h0_u"], name="h0_dirs"),
        helper.make_node("Unsqueeze", ["c0", "zero_axis"], ["c0_u"], name="c0_dirs"),
        helper.make_node(
            "LSTM",
            ["x_t", "W", "R", "B", "", "h0_u", "c0_u"],
            ["", "h_last", "c_last"],
            name="lstm",
            hidden_size=hidden,
        ),
        helper.make_node("Squeeze", ["h_last", "zero_axis"], ["h_n"], name="h_last_squeeze"),
        helper.make_node("MatMul", ["h_n", "head_w"], ["y"], name="head"),
    ]
    inits = [
        numpy_helper.from_array(np.array([0], np.int64), "zero_axis"),
        numpy_helper.from_array(_scaled(rng, 1, gates, features) / 2, "W"),
        numpy_helper.from_array(_scaled(rng, 1, gates, hidden) / 2, "R"),
        numpy_helper.from_array(
            (rng.standard_normal((1, 2 * gates)) * 0.1).astype(np.float32), "B"
        ),
        numpy_helper.from_array(_scaled(rng, hidden, 4), "head_w"),
    ]
    return _save(
        path,
        nodes,
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "seq", features]),
            helper.make_tensor_value_info("h0", TensorProto.FLOAT, ["N", hidden]),
            helper.make_tensor_value_info("c0", TensorProto.FLOAT, ["N", hidden]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        inits,
    )


#: Domain of the model-local function in make_local_function_model.
LOCAL_DOMAIN = "com.example.layers"


def make_local_function_model(path: Path, *, features: int = 16, seed: int = 0) -> Path:
    """x[N, 16] -> MatMul 'fc1' -> custom op 'ScaledGelu' (domain com.example.layers, defined
    in the model as an ONNX function) -> MatMul 'fc2' -> y[N, 4]. Exporters write such
    model-local functions (torch.onnx with dynamo, onnxscript); onnxruntime inlines them."""
    rng = np.random.default_rng(seed)
    function = helper.make_function(
        LOCAL_DOMAIN,
        "ScaledGelu",
        ["X"],
        ["Y"],
        [
            helper.make_node("Constant", [], ["k"], value_float=1.702),
            helper.make_node("Mul", ["X", "k"], ["kx"]),
            helper.make_node("Sigmoid", ["kx"], ["gate"]),
            helper.make_node("Mul", ["X", "gate"], ["Y"]),
        ],
        opset_imports=[helper.make_opsetid("", 17)],
    )
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
        helper.make_node("ScaledGelu", ["h"], ["g"], name="gelu", domain=LOCAL_DOMAIN),
        helper.make_node("MatMul", ["g", "w2"], ["y"], name="fc2"),
    ]
    graph = helper.make_graph(
        nodes,
        path.stem,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        initializer=[
            numpy_helper.from_array(_scaled(rng, features, 32), "w1"),
            numpy_helper.from_array(_scaled(rng, 32, 4), "w2"),
        ],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(LOCAL_DOMAIN, 1)],
        functions=[function],
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _scaled(rng: np.random.Generator, *shape: int) -> np.ndarray:
    """Normal weights divided by the square root of the fan-in (axis 0 of a 2-D MatMul
    weight, the product of the trailing axes otherwise), so activations stay near 1."""
    fan_in = (
        shape[0] if len(shape) == 2 else int(np.prod(shape[1:])) if len(shape) == 4 else shape[-1]
    )
    return (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)


def make_contrib_inverse_model(path: Path, *, seed: int = 0) -> Path:
    """x[N, 16] -> MatMul 'fc1' -> Reshape [N, 4, 4] -> Add 4*I -> com.microsoft Inverse
    'inverse' -> Reshape [N, 16] -> MatMul 'fc2' -> y[N, 4]. onnxruntime runs the contrib op,
    but its symbolic shape inference cannot infer its output ("Incomplete symbolic shape
    inference"), so quantization pre-processing must fall back."""
    rng = np.random.default_rng(seed)
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
        helper.make_node("Reshape", ["h", "square"], ["m"], name="to_matrix"),
        helper.make_node("Add", ["m", "diagonal"], ["md"], name="condition"),
        helper.make_node("Inverse", ["md"], ["inv"], name="inverse", domain="com.microsoft"),
        helper.make_node("Reshape", ["inv", "flat"], ["f"], name="to_vector"),
        helper.make_node("MatMul", ["f", "w2"], ["y"], name="fc2"),
    ]
    inits = [
        numpy_helper.from_array(_scaled(rng, 16, 16), "w1"),
        numpy_helper.from_array(np.array([-1, 4, 4], np.int64), "square"),
        numpy_helper.from_array((np.eye(4) * 4).astype(np.float32), "diagonal"),
        numpy_helper.from_array(np.array([-1, 16], np.int64), "flat"),
        numpy_helper.from_array(_scaled(rng, 16, 4) * 4, "w2"),
    ]
    graph = helper.make_graph(
        nodes,
        path.stem,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        initializer=inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
    )
    model.ir_version = 8
    onnx.save(model, str(path))
    return path
