"""Integer quantization of ONNX models (dynamic and static) with onnxruntime's tools."""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.registry import IntegerOpsRegistry, QDQRegistry, QLinearOpsRegistry
from onnxruntime.quantization.shape_inference import quant_pre_process

from optimizers.batching import batch_layout
from optimizers.config import (
    Int8Config,
    Int8WeightOnlyConfig,
    SmoothQuantConfig,
    StaticQuantizeConfig,
)
from optimizers.datasets import FeedBatch, check_fits, inspect_dataset, iter_feeds, pick_rows
from optimizers.errors import OptimizerError, QuantizationError
from optimizers.external_data import (
    data_file_for,
    has_external_data,
    needs_external_data,
    save_model,
)
from optimizers.model_info import inspect_model
from optimizers.quantization import calibration_cache, opset, smooth_quant
from optimizers.quantization import node_precision as precision
from optimizers.quantization import node_selection as selection
from optimizers.results import ModelInfo, PassContext, PassResult

logger = logging.getLogger(__name__)

#: Samples per calibration run when the model accepts any batch size: small enough to keep
#: the calibrator's buffered activations modest, large enough to amortise per-run overhead.
CALIBRATION_BATCH = 8
#: Pre-processing changes the working directory for a moment (see _pre_process).
_CWD_LOCK = threading.Lock()

_QUANT_TYPES = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
_CALIBRATION_METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}
_FORMATS = {"qdq": QuantFormat.QDQ, "qoperator": QuantFormat.QOperator}
#: What `weight_layers_only` quantizes: the ops that hold weights (their inputs only; Gather
#: for embedding tables, which are most of a small language model's size).
WEIGHT_LAYER_OPS = ("MatMul", "Gemm", "Conv", "Gather")


def quantize_int8(model_path: Path, config: Int8Config, ctx: PassContext) -> PassResult:
    """int8 quantization (dynamic or static) of every node or of the selected ones."""
    static = config if isinstance(config, StaticQuantizeConfig) else None
    start, end = ctx.progress_span
    info = inspect_model(model_path)
    notes: list[str] = []
    details: dict[str, Any] = {}
    stem = model_path.stem
    # Inputs with external data give outputs with external data, whatever their size.
    external_data = needs_external_data(model_path)
    model_path = upgrade_opset(model_path, config, ctx.workdir, info, notes, details)
    if static is not None and static.activation_type == "int8" and config.weight_type == "uint8":
        raise QuantizationError(
            "onnxruntime does not support int8 activations with uint8 weights; use uint8 "
            "activations or int8 weights"
        )

    ctx.progress("quantizing", start, "pre-processing the model for quantization")
    ctx.workdir.mkdir(parents=True, exist_ok=True)
    partial = config.scope == "partial"
    if partial or config.per_node:
        prepared, pre_processed = _prepare_partial(
            model_path, config, ctx.workdir, notes, external_data=external_data
        )
    else:
        prepared, pre_processed = _pre_process(
            model_path, ctx.workdir, notes, external_data=external_data
        )
    resolved = selection.Resolved()
    if partial:
        prepared, resolved = _resolve_selection(prepared, config, ctx.workdir)
    smoothed: list[str] = []
    if config.smooth_quant is not None:
        ctx.progress("calibrating", start, "measuring activation ranges for SmoothQuant")
        prepared, smoothed = _smooth(
            prepared, config, ctx, info, notes, details, external_data=external_data
        )
    graph = onnx.load(str(prepared), load_external_data=False)
    kept = precision.plan(graph, config, smoothed=smoothed)
    output = ctx.workdir / f"{stem}.{config.method}-int8.onnx"
    data_file_for(output).unlink(missing_ok=True)  # onnxruntime appends to an existing one
    weight_type = _QUANT_TYPES[config.weight_type]
    op_types = resolved.op_types_to_quantize
    if static is not None and static.weight_layers_only:
        op_types = list(WEIGHT_LAYER_OPS)
    untouched = list(dict.fromkeys([*resolved.nodes_to_exclude, *kept.out_of_main]))
    if config.method == "dynamic":
        # The dynamic quantizer renames each Gemm before it reads the exclusions: a Gemm that
        # `per_node` keeps out of dynamic int8 must be excluded by that name too.
        untouched = selection.with_gemm_rewrite(graph, untouched)
    chosen: dict[str, Any] = {
        "op_types_to_quantize": op_types,
        "nodes_to_quantize": resolved.nodes_to_quantize,
        "nodes_to_exclude": untouched or None,
    }

    reader: _DatasetReader | None = None
    try:
        if config.method == "dynamic":
            ctx.progress("quantizing", start + 0.1 * (end - start), "quantizing weights")
            quantize_dynamic(
                prepared,
                output,
                per_channel=config.per_channel,
                weight_type=weight_type,
                use_external_data_format=external_data,
                # Also MatMuls inside If branches and Loop/Scan bodies.
                extra_options={"EnableSubgraph": True},
                **chosen,
            )
        else:
            assert static is not None and static.calibration is not None  # the validator's
            source = _calibration_source(prepared, static, op_types, ctx, info, notes)
            reader = source.reader
            quantize_static(
                prepared,
                output,
                reader,
                quant_format=_FORMATS[static.format],
                per_channel=config.per_channel,
                activation_type=_QUANT_TYPES[static.activation_type],
                weight_type=weight_type,
                calibrate_method=_CALIBRATION_METHODS[static.calibration.method],
                use_external_data_format=external_data,
                extra_options=_static_options(static),
                **source.ranges_argument(),
                **chosen,
            )
            source.record(ctx, notes, details)
        output = precision.apply_after(
            output,
            kept,
            config,
            ctx.workdir,
            notes,
            external_data=external_data,
        )
    except OptimizerError:
        raise
    except Exception as exc:
        if reader is not None and exc is reader.progress_error:
            raise  # the caller's own exception (e.g. a cancellation) passes through unchanged
        raise QuantizationError(f"onnxruntime could not quantize the model: {exc}") from exc
    ctx.progress("quantizing", end, "quantization finished")

    quantized_nodes = _count_quantized_nodes(output)
    if config.method == "static":
        left = _float_subgraph_nodes(output, _quantizable_ops(config))
        if left:
            notes.append(
                f"{len(left)} node(s) inside If/Loop/Scan subgraphs stay float: onnxruntime's "
                f"static quantization covers the main graph only (e.g. {left[:5]}); method "
                "'dynamic' quantizes subgraphs too"
            )
    if quantized_nodes == 0:
        what = "selected nodes" if partial else "model"
        notes.append(
            f"no node was quantized: the {what} has no operators that onnxruntime quantizes "
            f"with method '{config.method}'; the output is the float model"
        )
    excluded: list[str] = []
    if partial:
        graph = onnx.load(str(prepared), load_external_data=False)
        excluded = selection.left_float(graph, resolved, _quantizable_ops(config))
    details |= {
        "method": config.method,
        "scope": config.scope,
        "format": static.format if static else None,
        "per_channel": config.per_channel,
        "weight_type": config.weight_type,
        "activation_type": static.activation_type if static else None,
        "calibration": static.calibration.model_dump() if static and static.calibration else None,
        "quantized_nodes": quantized_nodes,
        "excluded_nodes": excluded,
        "pre_processed": pre_processed,
        "activation_symmetric": static.activation_symmetric if static else None,
        "weight_layers_only": static.weight_layers_only if static else None,
        "preset": static.preset if static else None,
        "keep_float": kept.kept_float,
        "per_node": kept.summary(),
    }
    return PassResult(model_path=output, notes=notes, details=details)


def upgrade_opset(
    model_path: Path,
    config: Int8Config | Int8WeightOnlyConfig,
    workdir: Path,
    info: ModelInfo,
    notes: list[str],
    details: dict[str, Any],
) -> Path:
    """Per-channel scales and static QDQ need opset 13: older models are converted first."""
    if config.per_channel:
        reason = "per-channel quantization"
    elif isinstance(config, StaticQuantizeConfig) and config.format == "qdq":
        reason = "static QDQ quantization"
    else:
        return model_path
    current = info.opset or 0
    if current >= opset.PER_CHANNEL_OPSET:
        return model_path
    workdir.mkdir(parents=True, exist_ok=True)
    upgraded = opset.upgrade(
        model_path,
        workdir / f"{model_path.stem}.opset{opset.PER_CHANNEL_OPSET}.onnx",
        target=opset.PER_CHANNEL_OPSET,
        reason=reason,
    )
    details["opset_upgraded_from"] = current
    notes.append(
        f"upgraded the model from opset {current} to {opset.PER_CHANNEL_OPSET} for {reason}"
    )
    return upgraded


def _prepare_partial(
    model_path: Path,
    config: Int8Config,
    workdir: Path,
    notes: list[str],
    *,
    external_data: bool,
) -> tuple[Path, str]:
    """Pre-process for a partial scope. Node names in `include`/`exclude` normally come from
    the uploaded model; graph optimization would rename or fuse nodes, so it is skipped when
    nodes are selected by name. Names found only in the fully pre-processed graph (where the
    sensitivity report looks) select nodes of that graph instead."""
    uploaded = onnx.load(str(model_path), load_external_data=False)
    selection.check_op_types(uploaded, config)
    names = list(dict.fromkeys([*selection.selected_names(config), *config.per_node]))
    if not names:
        return _pre_process(model_path, workdir, notes, external_data=external_data)
    missing = selection.unknown_names(uploaded, names)
    if not missing:
        notes.append(
            "nodes are selected by name, so pre-processing kept the uploaded model's graph "
            "(shape inference only, no graph optimization) to keep its node names"
        )
        return _pre_process(
            model_path, workdir, notes, skip_optimization=True, external_data=external_data
        )
    prepared, pre_processed = _pre_process(model_path, workdir, notes, external_data=external_data)
    if pre_processed == "full":
        optimized = onnx.load(str(prepared), load_external_data=False)
        if not selection.unknown_names(optimized, names):
            notes.append(
                f"node names {missing[:5]} are not in the uploaded model but are in the "
                "pre-processed (optimized) graph; nodes were selected in that graph"
            )
            return prepared, pre_processed
    raise selection.unknown_names_error(uploaded, missing)


def _static_options(config: StaticQuantizeConfig) -> dict[str, Any]:
    options: dict[str, Any] = {"ActivationSymmetric": config.activation_symmetric}
    if config.weight_layers_only:
        # onnxruntime's QDQ quantizer also rounds a MatMul's output for whatever reads it
        # next; here the result stays float, like dynamic quantization leaves it.
        options["OpTypesToExcludeOutputQuantization"] = list(WEIGHT_LAYER_OPS)
    return options


@dataclass
class _CalibrationSource:
    """Where a static pass's activation ranges come from: the dataset (`reader`), or a
    calibration kept from an earlier run (`reused_samples`) in `ranges_file`."""

    reader: _DatasetReader | None
    key: calibration_cache.CalibrationKey | None = None
    ranges_file: Path | None = None
    reused_samples: int | None = None

    def ranges_argument(self) -> dict[str, Any]:
        """quantize_static reads an existing ranges file instead of calibrating, and writes
        the ranges it measured to a missing one."""
        return {} if self.ranges_file is None else {"calibration_cache_path": self.ranges_file}

    def record(self, ctx: PassContext, notes: list[str], details: dict[str, Any]) -> None:
        if self.reused_samples is not None:
            notes.append(
                f"calibration reused: the activation ranges an earlier run measured on "
                f"{self.reused_samples} samples of this dataset, for this model and these "
                "calibration settings; no data was read"
            )
            details |= {"calibration_reused": True, "calibrated_samples": self.reused_samples}
            return
        assert self.reader is not None
        samples = self.reader.available
        details |= {"calibration_reused": False, "calibrated_samples": samples}
        if self.key is None or self.ranges_file is None or ctx.calibration_cache is None:
            return
        kept = calibration_cache.store(
            ctx.calibration_cache,
            self.key,
            ranges_file=self.ranges_file,
            calibrated_samples=samples,
        )
        notes.append(
            f"calibrated on {samples} samples"
            + ("; the ranges are kept for later runs of this model and dataset" if kept else "")
        )


def _calibration_source(
    prepared: Path,
    config: StaticQuantizeConfig,
    op_types: list[str] | None,
    ctx: PassContext,
    info: ModelInfo,
    notes: list[str],
) -> _CalibrationSource:
    """A kept calibration of this exact model, dataset and settings when the context has
    one, else a reader of the dataset (whose ranges are kept when the context keeps any)."""
    calibration = config.calibration
    assert calibration is not None  # the validator's
    key = None
    dataset_sha256 = _dataset_sha256(ctx, calibration.dataset_id)
    if ctx.calibration_cache is not None and dataset_sha256 and calibration_cache.supported():
        key = calibration_cache.key_for(
            model_path=prepared,
            dataset_sha256=dataset_sha256,
            config=config,
            op_types=op_types,
            options=_static_options(config),
            batch_axes=dict(ctx.batch_axes),
        )
        reused = calibration_cache.lookup(
            ctx.calibration_cache, key, model_path=prepared, workdir=ctx.workdir
        )
        if reused is not None:
            start, end = ctx.progress_span
            ctx.progress("calibrating", start + 0.8 * (end - start), "calibration reused")
            return _CalibrationSource(
                reader=None,
                key=key,
                ranges_file=reused.ranges_file,
                reused_samples=reused.calibrated_samples,
            )
    reader = _DatasetReader(
        model=info,
        dataset=_calibration_path(ctx, calibration.dataset_id),
        samples=calibration.samples,
        ctx=ctx,
        seed=calibration.seed if calibration.sampling == "random" else None,
    )
    if reader.available < calibration.samples:
        notes.append(
            f"calibrated on {reader.available} samples: the dataset has fewer than the "
            f"{calibration.samples} requested"
        )
    if key is None:
        return _CalibrationSource(reader=reader)
    ranges_file = ctx.workdir / "calibration-ranges.json"
    ranges_file.unlink(missing_ok=True)  # onnxruntime would read it instead of calibrating
    return _CalibrationSource(reader=reader, key=key, ranges_file=ranges_file)


def _dataset_sha256(ctx: PassContext, dataset_id: str) -> str | None:
    """The dataset's sha256 as the caller knows it, else hashed here; None when nothing is
    kept (no cache folder) or there is no such file (the reader then says what is missing)."""
    if ctx.calibration_cache is None:
        return None
    known = ctx.dataset_sha256.get(dataset_id)
    if known:
        return known
    path = ctx.datasets.get(dataset_id)
    if path is None or not path.is_file():
        return None
    return calibration_cache.file_sha256(path)


def _smooth(
    prepared: Path,
    config: Int8Config,
    ctx: PassContext,
    info: ModelInfo,
    notes: list[str],
    details: dict[str, Any],
    *,
    external_data: bool,
) -> tuple[Path, list[str]]:
    """SmoothQuant on the model to quantize; returns it and the Mul nodes it inserted."""
    settings = config.smooth_quant
    if settings is None or settings.dataset_id is None:  # the config validator fills it
        raise QuantizationError("`smooth_quant` needs `smooth_quant.dataset_id`")
    model = onnx.load(str(prepared))
    absmax, samples, reused = _smoothing_absmax(prepared, model, settings, ctx, info, notes)
    result = smooth_quant.smooth(model, alpha=settings.alpha, absmax=absmax)
    smoothed = ctx.workdir / f"{prepared.stem}.smoothed.onnx"
    data_file_for(smoothed).unlink(missing_ok=True)
    save_model(result.model, smoothed, external_data=external_data)
    details["smooth_quant"] = {
        "alpha": settings.alpha,
        "samples": samples,
        "reused": reused,
        "layers": len(result.layers),
        "folded_into_normalization": len(result.folded),
        "inserted_mul": len(result.inserted),
    }
    if not result.layers:
        notes.append("SmoothQuant found no MatMul or Gemm with a constant weight to smooth")
    return smoothed, result.inserted


def _smoothing_absmax(
    prepared: Path,
    model: onnx.ModelProto,
    settings: SmoothQuantConfig,
    ctx: PassContext,
    info: ModelInfo,
    notes: list[str],
) -> tuple[dict[str, np.ndarray], int, bool]:
    """SmoothQuant's activation maxima for the model at `prepared`: kept from an earlier run
    of this model and dataset when the context keeps calibrations, else measured (and kept).
    Returns them, the samples they were measured on, and whether they were reused."""
    assert settings.dataset_id is not None  # the config validator's
    key = None
    dataset_sha256 = _dataset_sha256(ctx, settings.dataset_id)
    if ctx.calibration_cache is not None and dataset_sha256:
        key = calibration_cache.smoothing_key(
            model_path=prepared,
            dataset_sha256=dataset_sha256,
            samples=settings.samples,
            batch_axes=dict(ctx.batch_axes),
        )
        reused = calibration_cache.lookup_absmax(ctx.calibration_cache, key, model_path=prepared)
        if reused is not None:
            notes.append(
                f"SmoothQuant reused the activation maxima an earlier run measured on "
                f"{reused.calibrated_samples} samples of this dataset for this model; no data "
                "was read"
            )
            return reused.absmax, reused.calibrated_samples, True
    start, end = ctx.progress_span
    # Reported within the first tenth of the span, before the calibration's own reports.
    reader = _DatasetReader(
        model=info,
        dataset=_calibration_path(ctx, settings.dataset_id),
        samples=settings.samples,
        ctx=dataclasses.replace(ctx, progress_span=(start, start + 0.1 * (end - start))),
    )
    absmax = smooth_quant.activation_absmax(model, iter(reader.get_next, None))
    if key is not None and ctx.calibration_cache is not None and absmax:
        calibration_cache.store_absmax(
            ctx.calibration_cache, key, absmax=absmax, calibrated_samples=reader.available
        )
    return absmax, reader.available, False


def _resolve_selection(
    prepared: Path, config: Int8Config, workdir: Path
) -> tuple[Path, selection.Resolved]:
    """Selections in onnxruntime's terms. Nodes selected by op type are passed by name, so
    unnamed nodes get names first."""
    graph = onnx.load(str(prepared), load_external_data=False)
    if selection.name_unnamed_nodes(graph):
        renamed = workdir / f"{prepared.stem}.named.onnx"
        if has_external_data(prepared):
            # The copy lands in another folder, perhaps: it gets its own data file.
            full = onnx.load(str(prepared))
            selection.name_unnamed_nodes(full)
            save_model(full, renamed, external_data=True)
        else:
            onnx.save_model(graph, str(renamed))
        prepared = renamed
    return prepared, selection.resolve(graph, config)


def _quantizable_ops(config: Int8Config) -> set[str]:
    """Op types onnxruntime quantizes with this config (as its quantize_* functions default)."""
    if config.method == "dynamic":
        return set(IntegerOpsRegistry)
    return set(QLinearOpsRegistry) | set(QDQRegistry)


class _DatasetReader(CalibrationDataReader):
    """Feeds `samples` rows of a dataset, a few rows at a time: the first ones, or with a
    `seed` ones drawn at random (still streamed in file order)."""

    def __init__(
        self,
        *,
        model: ModelInfo,
        dataset: Path,
        samples: int,
        ctx: PassContext,
        seed: int | None = None,
    ) -> None:
        info = inspect_dataset(dataset)
        layout = batch_layout(model, ctx.batch_axes)
        check_fits(model, info, purpose="calibration", layout=layout)
        self.available = min(samples, info.num_samples)
        batch = layout.fixed or _even_batch(self.available)
        picked = None if seed is None else pick_rows(info.num_samples, self.available, seed)
        self._batches: Iterator[FeedBatch] = iter_feeds(
            dataset, model, layout, batch, limit=self.available, picked=picked
        )
        self._ctx = ctx
        self._done = 0
        self.progress_error: BaseException | None = None

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        if batch is None:
            return None
        # A fixed batch axis takes only full batches: iter_feeds wraps around to the first rows.
        feeds, rows = batch.feeds, batch.rows
        self._done += rows
        start, end = self._ctx.progress_span
        # Calibration is most of a static pass's time; it gets 10%..80% of the span.
        fraction = start + (end - start) * (0.1 + 0.7 * self._done / self.available)
        try:
            self._ctx.progress("calibrating", fraction, f"calibrated {self._done}/{self.available}")
        except BaseException as exc:
            self.progress_error = exc
            raise
        return feeds


def _even_batch(samples: int) -> int:
    """The largest batch up to CALIBRATION_BATCH that divides `samples`: onnxruntime's
    histogram calibrators (entropy, percentile) fail when batches differ in shape."""
    return next(
        size for size in range(min(CALIBRATION_BATCH, samples), 0, -1) if samples % size == 0
    )


def _calibration_path(ctx: PassContext, dataset_id: str) -> Path:
    try:
        return ctx.datasets[dataset_id]
    except KeyError:
        raise QuantizationError(f"calibration dataset '{dataset_id}' was not provided") from None


def _pre_process(
    model_path: Path,
    workdir: Path,
    notes: list[str],
    *,
    skip_optimization: bool = False,
    external_data: bool = False,
) -> tuple[Path, str]:
    """Shape inference and graph clean-up that make quantization cover more nodes. Optional:
    when symbolic shape inference fails it is retried with ONNX shape inference only, and
    when that fails too the original model is quantized as is. Returns the model to quantize
    and what was done: "full", "no_graph_optimization", "onnx_shape_inference_only" or
    "skipped"."""
    output = workdir / f"{model_path.stem}.preprocessed.onnx"
    arguments: dict[str, Any] = {"skip_optimization": skip_optimization}
    if external_data:
        arguments |= {
            "save_as_external_data": True,
            "all_tensors_to_one_file": True,
            "external_data_location": data_file_for(output).name,
        }
    try:
        _run_pre_process(model_path, output, workdir, arguments)
        return output, "no_graph_optimization" if skip_optimization else "full"
    except Exception as exc:
        logger.warning("symbolic shape inference failed for %s", model_path, exc_info=True)
        first = exc
    try:
        _run_pre_process(model_path, output, workdir, arguments | {"skip_symbolic_shape": True})
    except Exception as exc:
        logger.warning("quantization pre-processing failed for %s", model_path, exc_info=True)
        notes.append(
            f"pre-processing (shape inference) was skipped because it failed: "
            f"{_reason(first)}; without symbolic shape inference: {_reason(exc)}"
        )
        return model_path, "skipped"
    notes.append(
        f"symbolic shape inference failed ({_reason(first)}); pre-processing used ONNX shape "
        "inference only, so fewer tensors may have known shapes"
    )
    return output, "onnx_shape_inference_only"


def _run_pre_process(
    model_path: Path, output: Path, workdir: Path, arguments: dict[str, Any]
) -> None:
    """quant_pre_process in a scratch working directory: onnxruntime's symbolic shape
    inference saves the model it gave up on ('sym_shape_infer_temp.onnx' and a data file)
    in the current directory, which must not fill the service's own."""
    data_file_for(output).unlink(missing_ok=True)  # onnx appends to an existing data file
    # Resolved before the directory changes: relative paths would then point into scratch.
    source, target = model_path.resolve(), output.resolve()
    scratch = (workdir / "pre-process-scratch").resolve()
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        with _working_directory(scratch):
            quant_pre_process(str(source), str(target), **arguments)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@contextmanager
def _working_directory(path: Path) -> Iterator[None]:
    with _CWD_LOCK:
        previous = Path.cwd()
        os.chdir(path)
        try:
            yield
        finally:
            os.chdir(previous)


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _count_quantized_nodes(path: Path) -> int:
    """Quantized nodes in the graph and in subgraphs (If branches, Loop and Scan bodies)."""
    model = onnx.load(str(path), load_external_data=False)
    return sum(1 for node in selection.iter_nodes(model.graph) if _is_quantized(node))


def _float_subgraph_nodes(path: Path, quantizable: set[str]) -> list[str]:
    """Quantizable nodes left float inside the subgraphs of the model at `path`."""
    model = onnx.load(str(path), load_external_data=False)
    return [
        inner.name or inner.op_type
        for node in model.graph.node
        for subgraph in selection.subgraphs(node)
        for inner in selection.iter_nodes(subgraph)
        if inner.op_type in quantizable
    ]


def _is_quantized(node: onnx.NodeProto) -> bool:
    if node.op_type in selection.QUANTIZED_OPS or node.op_type.startswith("QLinear"):
        return True
    # onnxruntime's contrib quantized kernels: QGemm, QAttention, QEmbedLayerNormalization...
    return node.domain == "com.microsoft" and node.op_type.startswith("Q")
