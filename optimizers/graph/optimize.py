"""onnxruntime's offline graph optimizations as a pass."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

from optimizers.config import GraphOptimizeConfig
from optimizers.results import PassContext, PassResult


def graph_optimize(model_path: Path, config: GraphOptimizeConfig, ctx: PassContext) -> PassResult:
    start, _ = ctx.progress_span
    ctx.progress("optimizing", start, f"graph optimizations ({config.level})")
    ctx.workdir.mkdir(parents=True, exist_ok=True)
    out = ctx.workdir / "graph_optimized.onnx"
    options = ort.SessionOptions()
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        if config.level == "extended"
        else ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    )
    options.optimized_model_filepath = str(out)
    ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    return PassResult(model_path=out, notes=[f"onnxruntime graph optimizations ({config.level})"])
