"""Per-node sensitivity of a quantized model: run it and its float original side by side with
their intermediate tensors exposed, and rank the nodes by the error each one adds itself.

Tensors are matched by name (and shape) between the float model as uploaded and the quantized
model; what pre-processing fused or renamed cannot be matched and is counted, not guessed.
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from optimizers.batching import BatchLayout, batch_layout
from optimizers.datasets import check_fits, inspect_dataset, iter_feeds
from optimizers.measure.benchmark import make_feeds
from optimizers.measure.evaluate import SQNR_CAP_DB
from optimizers.measure.runtime import CPU
from optimizers.quantization.node_selection import QUANTIZED_OPS
from optimizers.results import ModelInfo

logger = logging.getLogger(__name__)

#: Samples analysed by default: enough for stable per-node statistics, few enough to be quick.
ANALYSIS_SAMPLES = 32
#: Rows per run when the model accepts any batch size.
ANALYSIS_BATCH = 8
#: Nodes listed in the report, worst first; the rest are counted.
MAX_REPORTED_NODES = 200
#: A node is an outlier when the error it adds is this much worse than the median node's...
OUTLIER_MARGIN_DB = 6.0
#: ...and worse than this; int8 noise below it rarely matters.
NEGLIGIBLE_DB = 40.0
#: Worse than this is suggested even without others to compare with (noise >= 1% of signal).
BAD_DB = 20.0
#: Suggested nodes at most, as a share of the quantized nodes (at least one).
SUGGEST_SHARE = 0.1
#: A segment that spans more weighted ops than this is too coarse to blame on one node.
MAX_PRIMARY_PER_SEGMENT = 2

#: Ops that carry weights or dominate compute: what a user excludes to keep a layer float.
PRIMARY_OPS = frozenset(
    {
        "Conv",
        "ConvTranspose",
        "MatMul",
        "Gemm",
        "Attention",
        "MultiHeadAttention",
        "LSTM",
        "GRU",
        "RNN",
        "Gather",
        "EmbedLayerNormalization",
    }
)
#: Activations that onnxruntime's QDQ quantizer removes, folding them into the next
#: QuantizeLinear: the quantized graph's tensor of that name holds the value before them.
_FOLDABLE_ACTIVATIONS = frozenset({"Relu", "Clip"})
_HALF_TYPES = (onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)


def analyze(
    float_model: Path,
    quantized_model: Path,
    feeds: Iterable[dict[str, np.ndarray]],
    *,
    pass_config: Mapping[str, Any] | None = None,
    provider: str = CPU,
    threads: int = 1,
) -> dict[str, Any]:
    """Compare every matchable intermediate tensor of the two models on `feeds` and rank the
    float model's nodes by the error they add. Never raises for a model it cannot analyse:
    the report then has `status: "failed"` and says why, so a diagnostic cannot fail a job.
    `pass_config` (the quantize pass as submitted) makes `suggested_pass` a complete pass."""
    try:
        return _analyze(float_model, quantized_model, feeds, pass_config, provider, threads)
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except Exception as exc:
        logger.warning(
            "sensitivity analysis failed for %s vs %s",
            float_model,
            quantized_model,
            exc_info=not isinstance(exc, (onnx.checker.ValidationError, ValueError)),
        )
        return failed_report(float_model, quantized_model, f"{type(exc).__name__}: {exc}")


def failed_report(float_model: Path, quantized_model: Path, error: str) -> dict[str, Any]:
    """A report that says why there is no ranking; same keys as a successful one."""
    return {
        "status": "failed",
        "error": error,
        "float_model": float_model.name,
        "quantized_model": quantized_model.name,
        "samples": 0,
        "outputs": [],
        "tensors": {"compared": 0, "unmatched": 0, "unmatched_examples": []},
        "quantized_nodes": 0,
        "nodes": [],
        "nodes_omitted": 0,
        "suggested_exclude": {"nodes": []},
        "suggested_pass": None,
        "notes": [],
    }


def analysis_feeds(
    model: ModelInfo,
    *,
    dataset: Path | None,
    samples: int = ANALYSIS_SAMPLES,
    input_shapes: dict[str, list[int]] | None = None,
    seed: int = 0,
    layout: BatchLayout | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Feeds for `analyze`: the first `samples` rows of `dataset` (streamed, padded to a fixed
    batch axis), else seeded random inputs shaped like `make_feeds` shapes them."""
    layout = layout or batch_layout(model)
    batch = layout.fixed or min(ANALYSIS_BATCH, samples)
    if dataset is None:
        for index in range(max(1, math.ceil(samples / batch))):
            yield make_feeds(
                model,
                batch,
                dataset=None,
                input_shapes=input_shapes,
                seed=seed + index,
                layout=layout,
            )
        return
    check_fits(model, inspect_dataset(dataset), purpose="sensitivity", layout=layout)
    for rows in iter_feeds(dataset, model, layout, batch, limit=samples):
        yield rows.feeds


@dataclass
class _Graph:
    """What the analysis needs of one top-level graph, read without external data."""

    proto: onnx.ModelProto
    producer: dict[str, onnx.NodeProto]
    inputs: set[str]
    constants: set[str]
    outputs: list[str]
    #: Constants stored as float16 or bfloat16: a node reading one computes in half precision.
    half_constants: set[str] = field(default_factory=set)

    @classmethod
    def load(cls, path: Path) -> _Graph:
        proto = onnx.load(str(path), load_external_data=False)
        graph = proto.graph
        constants = {init.name for init in graph.initializer}
        constants |= {init.values.name for init in graph.sparse_initializer}
        producer: dict[str, onnx.NodeProto] = {}
        for node in graph.node:
            for name in node.output:
                if not name:
                    continue
                producer[name] = node
                if node.op_type == "Constant":
                    constants.add(name)
        return cls(
            proto=proto,
            producer=producer,
            inputs={value.name for value in graph.input} - constants,
            constants=constants,
            outputs=[value.name for value in graph.output],
            half_constants={
                init.name for init in graph.initializer if init.data_type in _HALF_TYPES
            },
        )


@dataclass
class _Stats:
    """Running sums over all samples of one tensor in both models."""

    signal: float = 0.0
    noise: float = 0.0
    dot: float = 0.0
    quantized_energy: float = 0.0
    nonfinite: bool = False
    dtype_changed: bool = False

    def add(self, ref: np.ndarray, out: np.ndarray) -> None:
        ref64 = ref.astype(np.float64).ravel()
        out64 = out.astype(np.float64).ravel()
        if not np.all(np.isfinite(out64)):
            self.nonfinite = True
            out64 = np.nan_to_num(out64, nan=0.0, posinf=0.0, neginf=0.0)
        error = ref64 - out64
        self.signal += float(ref64 @ ref64)
        self.noise += float(error @ error)
        self.dot += float(ref64 @ out64)
        self.quantized_energy += float(out64 @ out64)

    def nsr(self) -> float:
        """Noise-to-signal power ratio; infinite for noise on a zero signal or NaN outputs."""
        if self.nonfinite:
            return math.inf
        if self.noise == 0.0:
            return 0.0
        return self.noise / self.signal if self.signal > 0.0 else math.inf

    def cosine(self) -> float:
        norms = math.sqrt(self.signal * self.quantized_energy)
        if norms == 0.0:
            return 1.0 if self.signal == self.quantized_energy else 0.0
        return max(-1.0, min(1.0, self.dot / norms))


@dataclass
class _Entry:
    node: onnx.NodeProto
    outputs: list[str]
    segment: list[onnx.NodeProto]
    quantized: bool
    sqnr_db: float
    cosine: float
    input_sqnr_db: float
    local_sqnr_db: float
    exclude: list[str] = field(default_factory=list)


def _analyze(
    float_model: Path,
    quantized_model: Path,
    feeds: Iterable[dict[str, np.ndarray]],
    pass_config: Mapping[str, Any] | None,
    provider: str,
    threads: int,
) -> dict[str, Any]:
    ref = _Graph.load(float_model)
    quant = _Graph.load(quantized_model)
    notes: list[str] = []
    # Every float intermediate of the original, to count honestly what cannot be matched.
    ref_names = [
        name for name in ref.producer if name not in ref.constants and name not in ref.inputs
    ]
    shared = [name for name in ref_names if name in quant.producer]
    ref_session = _exposing_session(float_model, ref, ref_names, provider, threads)
    quant_session = _exposing_session(quantized_model, quant, shared, provider, threads)
    ref_outputs = [output.name for output in ref_session.get_outputs()]
    quant_outputs = [output.name for output in quant_session.get_outputs()]
    quant_inputs = {value.name for value in quant_session.get_inputs()}

    stats: dict[str, _Stats] = {}
    float_tensors: set[str] = set()
    mismatched: set[str] = set()
    samples = 0
    for feed in feeds:
        if not feed:
            continue
        # Batched inputs come first (datasets.to_feeds, make_feeds in model order); scalars
        # and state given once have no sample axis to count.
        samples += next((len(array) for array in feed.values() if np.ndim(array)), 1)
        ref_values = dict(zip(ref_outputs, ref_session.run(ref_outputs, feed), strict=True))
        quant_feed = {name: array for name, array in feed.items() if name in quant_inputs}
        quant_values = dict(
            zip(quant_outputs, quant_session.run(quant_outputs, quant_feed), strict=True)
        )
        for name in ref_names:
            ref_value = ref_values.get(name)
            if ref_value is None or not _is_float(ref_value):
                continue
            float_tensors.add(name)
            quant_value = quant_values.get(name)
            if quant_value is None or name in mismatched:
                continue
            if not _is_float(quant_value) or quant_value.shape != ref_value.shape:
                mismatched.add(name)
                stats.pop(name, None)
                continue
            quant_value = _undo_folded_activation(name, quant_value, ref, quant)
            tensor = stats.setdefault(name, _Stats())
            tensor.dtype_changed = tensor.dtype_changed or quant_value.dtype != ref_value.dtype
            tensor.add(ref_value, quant_value)
    if samples == 0:
        return failed_report(float_model, quantized_model, "no input samples were given")

    unmatched = sorted(float_tensors - set(stats) - set(ref.inputs))
    entries = _entries(ref, quant, stats)
    quantized_entries = [entry for entry in entries if entry.quantized]
    suggested = _suggest(quantized_entries, notes)
    if stats and not quantized_entries:
        notes.append("no matched node shows reduced precision; nothing to suggest")
    if len(stats) < max(1, len(float_tensors) // 4):
        notes.append(
            f"only {len(stats)} of {len(float_tensors)} float tensors could be matched by name "
            "in the quantized model (QOperator format and graph fusions rename tensors); the "
            "per-node attribution is coarse"
        )
    ranked = sorted(entries, key=lambda entry: (not entry.quantized, entry.local_sqnr_db))
    return {
        "status": "ok",
        "error": None,
        "float_model": float_model.name,
        "quantized_model": quantized_model.name,
        "samples": samples,
        "outputs": [_output_summary(name, stats) for name in ref.outputs if name in stats],
        "tensors": {
            "compared": len(stats),
            "unmatched": len(unmatched),
            "unmatched_examples": unmatched[:10],
        },
        "quantized_nodes": len(quantized_entries),
        "nodes": [
            _entry_json(rank, entry)
            for rank, entry in enumerate(ranked[:MAX_REPORTED_NODES], start=1)
        ],
        "nodes_omitted": max(0, len(ranked) - MAX_REPORTED_NODES),
        "suggested_exclude": {"nodes": suggested},
        "suggested_pass": suggested_pass(pass_config, suggested) if suggested else None,
        "notes": notes,
    }


def suggested_pass(pass_config: Mapping[str, Any] | None, nodes: list[str]) -> dict[str, Any]:
    """The pass to submit next: the same quantization with `nodes` kept float."""
    snippet: dict[str, Any] = {"kind": "quantize"}
    if pass_config is not None:
        snippet.update({key: value for key, value in pass_config.items() if value is not None})
    previous = snippet.get("exclude") or {}
    excluded = list(dict.fromkeys([*previous.get("nodes", []), *nodes]))
    snippet.pop("mixed", None)
    snippet["scope"] = "partial"
    snippet["exclude"] = {**previous, "nodes": excluded}
    return snippet


def _exposing_session(
    path: Path, graph: _Graph, names: list[str], provider: str, threads: int
) -> ort.InferenceSession:
    """A session of the model at `path` that also returns the tensors `names`. Graph
    optimizations are off, so each exposed tensor holds the value the graph defines."""
    proto = graph.proto
    present = set(graph.outputs)
    proto.graph.output.extend(
        onnx.ValueInfoProto(name=name) for name in names if name not in present
    )
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    providers = [provider] if provider == CPU else [provider, CPU]
    try:
        if _uses_external_data(proto):
            # Loaded from memory, with external files read from the original folder: nothing
            # large is copied and onnxruntime's external-path checks still apply.
            options.add_session_config_entry(
                "session.model_external_initializers_file_folder_path", str(path.parent)
            )
            return ort.InferenceSession(
                proto.SerializeToString(), sess_options=options, providers=providers
            )
        with tempfile.TemporaryDirectory(prefix="modelpress-sensitivity-") as tmp:
            copy = Path(tmp) / path.name
            onnx.save(proto, str(copy))
            return ort.InferenceSession(str(copy), sess_options=options, providers=providers)
    finally:
        del proto.graph.output[len(graph.outputs) :]


def _uses_external_data(proto: onnx.ModelProto) -> bool:
    return any(init.data_location == onnx.TensorProto.EXTERNAL for init in proto.graph.initializer)


def _is_float(value: Any) -> bool:
    return isinstance(value, np.ndarray) and value.dtype.kind == "f"


def _undo_folded_activation(name: str, value: np.ndarray, ref: _Graph, quant: _Graph) -> np.ndarray:
    """Apply a Relu or Clip that the QDQ quantizer folded away, so that the quantized graph's
    tensor holds the same quantity as the float graph's tensor of that name."""
    ref_node = ref.producer.get(name)
    quant_node = quant.producer.get(name)
    if ref_node is None or quant_node is None or ref_node.op_type == quant_node.op_type:
        return value
    if ref_node.op_type not in _FOLDABLE_ACTIVATIONS:
        return value
    if ref_node.op_type == "Relu":
        return np.maximum(value, 0)
    if ref_node.op_type == "Clip":
        low, high = _clip_bounds(ref_node, ref)
        return np.clip(value, low, high)
    return value


def _clip_bounds(node: onnx.NodeProto, graph: _Graph) -> tuple[float | None, float | None]:
    attributes = {attribute.name: attribute.f for attribute in node.attribute}
    bounds: list[float | None] = [attributes.get("min"), attributes.get("max")]
    initializers = {init.name: init for init in graph.proto.graph.initializer}
    for index in (1, 2):
        if len(node.input) > index and node.input[index] in initializers:
            init = initializers[node.input[index]]
            if init.data_location != onnx.TensorProto.EXTERNAL:
                bounds[index - 1] = float(numpy_helper.to_array(init))
    return bounds[0], bounds[1]


def _entries(ref: _Graph, quant: _Graph, stats: dict[str, _Stats]) -> list[_Entry]:
    """One entry per float node with a matched output: its error, the error of the matched
    tensors it reads (through any unmatched nodes, which it is then blamed for too), and the
    error it adds itself."""
    entries = []
    for node in ref.proto.graph.node:
        outputs = [name for name in node.output if name in stats]
        if not outputs or node.op_type == "Constant":
            continue
        segment, boundary = _segment(node, ref, stats)
        nsr_in = max(
            (stats[name].nsr() if name in stats else 0.0 for name in boundary), default=0.0
        )
        signal = sum(stats[name].signal for name in outputs)
        noise = sum(stats[name].noise for name in outputs)
        nonfinite = any(stats[name].nonfinite for name in outputs)
        nsr_out = math.inf if nonfinite else _ratio(noise, signal)
        quantized = any(stats[name].dtype_changed for name in outputs) or _reduced_precision(
            outputs, quant, stats
        )
        entry = _Entry(
            node=node,
            outputs=outputs,
            segment=segment,
            quantized=quantized,
            sqnr_db=_db(nsr_out),
            cosine=min(stats[name].cosine() for name in outputs),
            input_sqnr_db=_db(nsr_in),
            local_sqnr_db=_db(max(nsr_out - nsr_in, 0.0) if math.isfinite(nsr_out) else math.inf),
        )
        primary = [member.name for member in segment if member.op_type in PRIMARY_OPS]
        entry.exclude = [name for name in (primary or [node.name]) if name]
        entries.append(entry)
    return entries


def _segment(
    node: onnx.NodeProto, graph: _Graph, stats: dict[str, _Stats]
) -> tuple[list[onnx.NodeProto], set[str]]:
    """`node` and the unmatched nodes between it and the nearest matched tensors or graph
    inputs (the boundary). Weights and constants are part of the nodes, not inputs."""
    segment = [node]
    seen = {id(node)}
    boundary: set[str] = set()
    stack = list(node.input)
    while stack:
        name = stack.pop()
        if not name or name in graph.constants:
            continue
        if name in stats or name in graph.inputs:
            boundary.add(name)
            continue
        producer = graph.producer.get(name)
        if producer is None or id(producer) in seen:
            continue
        seen.add(id(producer))
        segment.append(producer)
        stack.extend(producer.input)
    return segment, boundary


def _reduced_precision(outputs: list[str], quant: _Graph, stats: dict[str, _Stats]) -> bool:
    """Whether the quantized graph computes `outputs` through quantization ops or float16,
    looking back from them to the nearest matched tensors."""
    stack = [quant.producer[name] for name in outputs if name in quant.producer]
    seen: set[int] = set()
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if (
            node.op_type in QUANTIZED_OPS
            or node.op_type.startswith("QLinear")
            or (node.domain == "com.microsoft" and node.op_type.startswith("Q"))
            or (node.op_type == "Cast" and _casts_to_float16(node))
            or any(name in quant.half_constants for name in node.input)
        ):
            return True
        for name in node.input:
            if name and name not in stats and name not in quant.constants:
                producer = quant.producer.get(name)
                if producer is not None:
                    stack.append(producer)
    return False


def _casts_to_float16(node: onnx.NodeProto) -> bool:
    return any(
        attribute.name == "to" and attribute.i in _HALF_TYPES for attribute in node.attribute
    )


def _suggest(entries: list[_Entry], notes: list[str]) -> list[str]:
    """Nodes whose added error is a clear outlier: far worse than the median quantized node
    and not negligible, at most SUGGEST_SHARE of the quantized nodes."""
    if not entries:
        return []
    ordered = sorted(entries, key=lambda entry: entry.local_sqnr_db)
    median = float(np.median([entry.local_sqnr_db for entry in ordered]))
    limit = max(1, round(SUGGEST_SHARE * len(entries)))
    suggested: list[str] = []
    for entry in ordered:
        outlier = entry.local_sqnr_db <= median - OUTLIER_MARGIN_DB or entry.local_sqnr_db < BAD_DB
        if not outlier or entry.local_sqnr_db >= NEGLIGIBLE_DB:
            break
        if not entry.exclude:
            notes.append(
                f"the node producing '{entry.outputs[0]}' has no name, so it cannot be excluded"
            )
            continue
        if len(entry.exclude) > MAX_PRIMARY_PER_SEGMENT:
            continue
        suggested.extend(name for name in entry.exclude if name not in suggested)
        if len(suggested) >= limit:
            break
    return suggested[: max(limit, 1)]


def _output_summary(name: str, stats: dict[str, _Stats]) -> dict[str, Any]:
    tensor = stats[name]
    return {"name": name, "sqnr_db": _round(_db(tensor.nsr())), "cosine": round(tensor.cosine(), 6)}


def _entry_json(rank: int, entry: _Entry) -> dict[str, Any]:
    return {
        "rank": rank,
        "node": entry.node.name or None,
        "op_type": entry.node.op_type,
        "outputs": entry.outputs,
        "covers": [member.name or member.op_type for member in entry.segment[1:]],
        "exclude": entry.exclude,
        "quantized": entry.quantized,
        "sqnr_db": _round(entry.sqnr_db),
        "cosine": round(entry.cosine, 6),
        "input_sqnr_db": _round(entry.input_sqnr_db),
        "sqnr_drop_db": _round(max(entry.input_sqnr_db - entry.sqnr_db, 0.0)),
        "local_sqnr_db": _round(entry.local_sqnr_db),
    }


def _ratio(noise: float, signal: float) -> float:
    if noise == 0.0:
        return 0.0
    return noise / signal if signal > 0.0 else math.inf


def _db(nsr: float) -> float:
    """SQNR in dB of a noise-to-signal ratio, capped so JSON stays finite."""
    if nsr <= 0.0:
        return SQNR_CAP_DB
    if math.isinf(nsr):
        return -SQNR_CAP_DB
    return max(-SQNR_CAP_DB, min(SQNR_CAP_DB, -10.0 * math.log10(nsr)))


def _round(value: float) -> float:
    return round(value, 2)
