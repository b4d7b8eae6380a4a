"""The `graph_optimize` pass: onnxruntime's offline graph optimizations (a session that
writes the graph it optimized), optionally after onnxruntime's transformer optimizer has
fused attention, normalization and GELU subgraphs. The model computes the same numbers; the
pipeline measures its fidelity like any pass's output."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import onnx
import onnxruntime as ort

from optimizers.config import GraphOptimizeConfig
from optimizers.errors import GraphOptimizationError, OptimizerError
from optimizers.external_data import data_file_for, needs_external_data
from optimizers.measure.runtime import CPU
from optimizers.results import PassContext, PassResult

_LEVELS = {
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
}
#: Tensors of at least this many bytes go to the external data file (as save_model does).
_EXTERNAL_MIN_BYTES = 1024
#: The BERT optimizer covers encoders of any size: it reads heads and width from the graph.
_MODEL_TYPE = "bert"


def graph_optimize(model_path: Path, config: GraphOptimizeConfig, ctx: PassContext) -> PassResult:
    start, end = ctx.progress_span
    ctx.workdir.mkdir(parents=True, exist_ok=True)
    # Inputs with external data give outputs with external data, whatever their size.
    external_data = needs_external_data(model_path)
    notes: list[str] = []
    details: dict[str, Any] = {
        "level": config.level,
        "transformer_fusions": config.transformer_fusions,
    }
    before = _op_counts(model_path)
    source = model_path
    if config.transformer_fusions:
        ctx.progress("optimizing", start, "fusing transformer subgraphs")
        # The fusions match the graph after constant folding and redundant-node removal
        # (what the optimizer's own opt_level=1 runs first, here with our external data).
        folded = offline_optimize(
            model_path,
            ctx.workdir / f"{model_path.stem}.folded.onnx",
            level="basic",
            external_data=external_data,
        )
        source, fused = fuse_transformer(
            folded, ctx.workdir / f"{model_path.stem}.fused.onnx", external_data=external_data
        )
        _remove(folded)
        details["fusions"] = fused
        if fused:
            counts = ", ".join(f"{count} {op}" for op, count in fused.items())
            notes.append(f"onnxruntime's transformer optimizer fused {counts}")
        else:
            notes.append(
                "onnxruntime's transformer optimizer found nothing to fuse (no attention, "
                "layer normalization, skip-connection or GELU subgraph it recognizes); only "
                f"the {config.level} graph optimizations were applied"
            )
    ctx.progress("optimizing", start + 0.5 * (end - start), f"{config.level} graph optimizations")
    output = offline_optimize(
        source,
        ctx.workdir / f"{model_path.stem}.{config.level}.onnx",
        level=config.level,
        external_data=external_data,
    )
    if source != model_path:
        _remove(source)  # a large model's intermediate copies would fill the scratch disk
    _check_interface(model_path, output)
    after = _op_counts(output)
    details |= {
        "nodes_before": sum(before.values()),
        "nodes_after": sum(after.values()),
        "op_types_removed": {
            op: n - after.get(op, 0) for op, n in before.items() if n > after.get(op, 0)
        },
        "op_types_added": {
            op: n - before.get(op, 0) for op, n in after.items() if n > before.get(op, 0)
        },
    }
    notes.append(
        f"{config.level} graph optimizations: {details['nodes_before']} nodes before, "
        f"{details['nodes_after']} after"
    )
    if config.level == "extended":
        notes.append(
            "extended optimizations fuse nodes into onnxruntime's own CPU operators: the model "
            "runs only in onnxruntime, and onnxruntime ties such offline-optimized models to "
            "the execution provider and hardware they were made on (here the CPU provider)"
        )
    ctx.progress("optimizing", end, "graph optimized")
    return PassResult(model_path=output, notes=notes, details=details)


def offline_optimize(source: Path, output: Path, *, level: str, external_data: bool) -> Path:
    """Optimize `source` at `level` with the CPU provider and write the result at `output`
    (its tensors in '<name>.data' beside it with `external_data`)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = _LEVELS[level]
    options.optimized_model_filepath = str(output)
    if external_data:
        data = data_file_for(output)
        data.unlink(missing_ok=True)
        options.add_session_config_entry(
            "session.optimized_model_external_initializers_file_name", data.name
        )
        options.add_session_config_entry(
            "session.optimized_model_external_initializers_min_size_in_bytes",
            str(_EXTERNAL_MIN_BYTES),
        )
    try:
        # The session exists only to write the optimized graph.
        ort.InferenceSession(str(source), sess_options=options, providers=[CPU])
    except Exception as exc:
        raise GraphOptimizationError(
            f"onnxruntime could not apply its {level} graph optimizations: {exc}"
        ) from exc
    if not output.is_file():
        raise GraphOptimizationError(f"onnxruntime wrote no {level}-optimized model")
    return output


def fuse_transformer(
    source: Path, output: Path, *, external_data: bool
) -> tuple[Path, dict[str, int]]:
    """onnxruntime's transformer optimizer (BERT fusions, its own graph rewrites only) on
    `source`, saved at `output`; returns it and the fused operators it counts."""
    # Imported here: it pulls in the optimizer's many fusion modules, which no other pass needs.
    from onnxruntime.transformers.optimizer import optimize_model

    try:
        optimizer = optimize_model(
            str(source),
            model_type=_MODEL_TYPE,
            num_heads=0,  # 0: read from the graph
            hidden_size=0,
            opt_level=0,  # onnxruntime's basic optimizations already ran (offline_optimize)
            only_onnxruntime=False,
        )
        statistics = optimizer.get_fused_operator_statistics()
        data_file_for(output).unlink(missing_ok=True)
        # Sorts the nodes and declares the com.microsoft opset the fused operators need.
        optimizer.save_model_to_file(str(output), use_external_data_format=external_data)
    except OptimizerError:
        raise
    except Exception as exc:
        raise GraphOptimizationError(
            f"onnxruntime's transformer optimizer failed on this model: {exc}; run the pass "
            "without transformer_fusions"
        ) from exc
    # The statistics count some operators whether fused or already in the graph (e.g.
    # LayerNormalization): only what the source did not have counts as fused.
    had = _op_counts(source)
    fused = {
        op: count - had.get(op, 0)
        for op, count in sorted(statistics.items())
        if count > had.get(op, 0)
    }
    return output, fused


def _remove(path: Path) -> None:
    path.unlink(missing_ok=True)
    data_file_for(path).unlink(missing_ok=True)


def _op_counts(path: Path) -> Counter[str]:
    model = onnx.load(str(path), load_external_data=False)
    return Counter(node.op_type for node in model.graph.node)


def _check_interface(original: Path, optimized: Path) -> None:
    """The optimized model must take and give what the original does: the pipeline and its
    users feed it the same inputs and read the same outputs."""
    want = onnx.load(str(original), load_external_data=False).graph
    have = onnx.load(str(optimized), load_external_data=False).graph
    for what, a, b in (("inputs", want.input, have.input), ("outputs", want.output, have.output)):
        initializers = {init.name for init in want.initializer}
        expected = [(v.name, v.type.tensor_type.elem_type) for v in a if v.name not in initializers]
        got = [(v.name, v.type.tensor_type.elem_type) for v in b if v.name not in initializers]
        if expected != got:
            raise GraphOptimizationError(
                f"the optimized graph's {what} {[n for n, _ in got]} differ from the model's "
                f"{[n for n, _ in expected]}"
            )
