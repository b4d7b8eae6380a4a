"""Small helpers shared by the optimizers tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import numpy as np
import onnx
from onnx import TensorProto

from optimizers.config import QuantizeConfig, parse_pass


def save_npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def weight_is_float(model_path: Path, node_name: str) -> bool:
    """Whether node `node_name` still exists and reads a float32 initializer as its weight
    (input 1): the node was left unquantized."""
    model = onnx.load(str(model_path))
    floats = {init.name for init in model.graph.initializer if init.data_type == TensorProto.FLOAT}
    return any(
        node.name == node_name and len(node.input) > 1 and node.input[1] in floats
        for node in model.graph.node
    )


def partial_quantize(*nodes: str) -> dict[str, Any]:
    """A dynamic quantize pass limited to `nodes`; an unknown node name fails the pass."""
    return {
        "kind": "quantize",
        "method": "dynamic",
        "scope": "partial",
        "include": {"nodes": list(nodes)},
    }


def quantize_config(fields: dict[str, Any] | None = None, /, **more: Any) -> QuantizeConfig:
    """The config class of the quantize method the fields name (as a job spec picks it)."""
    return cast(QuantizeConfig, parse_pass({"kind": "quantize", **(fields or {}), **more}))
