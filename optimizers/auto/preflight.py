"""The auto search's preflight: what the model is, which technique families apply to it on
this hardware and why, decided from descriptions alone before any worker time is spent."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from optimizers.auto.candidates import (
    SCREEN_SAMPLES,
    Candidate,
    candidates_for,
    graph_fallback,
    trial_spec,
)
from optimizers.auto.families import label, technique
from optimizers.batching import batch_layout
from optimizers.checks import MIN_QUANTIZE_OPSET, check_spec
from optimizers.config import AutoConfig, PipelineSpec
from optimizers.errors import DatasetMismatchError, OptimizerError, UnsupportedError
from optimizers.results import DatasetInfo, ModelInfo

#: Ops that only transformer blocks have next to their attention (LayerNormalization as one op
#: or decomposed through ReduceMean, GELU as one op or through Erf, and the fused forms).
_TRANSFORMER_MARKERS = frozenset(
    {
        "LayerNormalization",
        "SkipLayerNormalization",
        "SimplifiedLayerNormalization",
        "Erf",
        "Gelu",
        "FastGelu",
        "BiasGelu",
        "ReduceMean",
    }
)
_FUSED_ATTENTION = frozenset({"Attention", "MultiHeadAttention"})
_CONVOLUTIONS = frozenset({"Conv", "ConvTranspose"})
#: Layers a trainable copy of the model prunes and trains (optimizers/trainable/structured.py).
_TRAINABLE = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})


@dataclass(frozen=True)
class Preflight:
    structure: str
    facts: dict[str, Any]
    applicable: dict[str, str]
    skipped: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "structure": self.structure,
            "facts": self.facts,
            "applicable": self.applicable,
            "skipped": self.skipped,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Preflight:
        return cls(
            structure=str(data["structure"]),
            facts=dict(data["facts"]),
            applicable=dict(data["applicable"]),
            skipped=dict(data.get("skipped") or {}),
        )


def auto_config(spec: PipelineSpec) -> AutoConfig:
    config = spec.passes[0]
    if not isinstance(config, AutoConfig):
        raise UnsupportedError("the spec has no `auto` pass: there is nothing to search")
    return config


def structure_of(op_types: Mapping[str, int] | None) -> str:
    """`transformer` (MatMul and Softmax with layer normalization or GELU, or a fused
    attention), `cnn` (convolutions), `mlp` (Gemm or MatMul layers), else `unknown`."""
    if not op_types:
        return "unknown"
    ops = {op for op, count in op_types.items() if count > 0}
    if ops & _FUSED_ATTENTION or ({"MatMul", "Softmax"} <= ops and ops & _TRANSFORMER_MARKERS):
        return "transformer"
    if ops & _CONVOLUTIONS:
        return "cnn"
    if ops & {"Gemm", "MatMul"}:
        return "mlp"
    return "unknown"


def preflight(
    model: ModelInfo,
    datasets: Mapping[str, DatasetInfo],
    spec: PipelineSpec,
    *,
    live_queues: Collection[str],
) -> Preflight:
    """Describe the search before it starts: the model's structure, the facts the search is
    planned from, every family it will try (and why) and every one it will not (and why).
    Raises DatasetMismatchError or UnsupportedError, with every reason, when nothing can be
    searched: the dataset does not fit the model, accuracy is asked without labels, or no
    family applies."""
    config = auto_config(spec)
    dataset = datasets.get(config.dataset_id)
    if dataset is None:
        raise DatasetMismatchError(f"dataset '{config.dataset_id}' was not found")
    eval_id = config.eval_dataset_id or config.dataset_id
    measured_on = datasets.get(eval_id)
    if measured_on is None:
        raise DatasetMismatchError(f"dataset '{eval_id}' was not found")
    metric = config.metric or ("accuracy" if measured_on.has_labels else "fidelity")
    if metric == "accuracy" and not measured_on.has_labels:
        raise DatasetMismatchError(
            f"metric 'accuracy' needs labels, and dataset '{eval_id}' has none; add "
            "a `labels` array, or use metric 'fidelity' (the cosine of the outputs against the "
            "original's)"
        )
    layout = batch_layout(model, spec.batch_axes())
    batch_size = config.batch_size
    batch_note = None
    if layout.fixed is not None and layout.fixed != config.batch_size:
        batch_size = layout.fixed
        batch_note = (
            f"the model fixes its batch size at {layout.fixed}, so every trial is timed at "
            f"batch {layout.fixed} instead of {config.batch_size}"
        )
    op_types = dict(model.op_types) if model.op_types is not None else None
    structure = structure_of(op_types)
    facts: dict[str, Any] = {
        "opset": model.opset,
        "parameter_count": model.parameter_count,
        "size_bytes": model.size_bytes,
        "op_types": op_types,
        "inputs": [tensor.model_dump(mode="json") for tensor in model.inputs],
        "dynamic_dims": [
            {"input": tensor.name, "axis": axis, "dim": dim}
            for tensor in model.inputs
            for axis, dim in enumerate(tensor.shape)
            if not isinstance(dim, int)
        ],
        "batch_axes": layout.as_json(),
        "fixed_batch": layout.fixed,
        "batch_size": batch_size,
        "batch_size_note": batch_note,
        "dataset_id": config.dataset_id,
        "eval_dataset_id": eval_id,
        "held_out": eval_id != config.dataset_id,
        "eval_note": (
            None
            if eval_id != config.dataset_id or not {"prune", "distill"} & set(config.allow)
            else f"pruning and distillation fine-tune on dataset '{config.dataset_id}', where "
            "their drop is measured too, so it reads optimistic; give `eval_dataset_id` "
            "(held-out data) for an unbiased drop"
        ),
        "samples": measured_on.num_samples,
        "dataset_samples": dataset.num_samples,
        "screen_samples": min(SCREEN_SAMPLES, measured_on.num_samples),
        "has_labels": dataset.has_labels,
        "metric": metric,
        "max_drop": config.max_drop,
        "objective": config.objective,
        "device": config.device,
        "live_queues": sorted(live_queues),
        "worker_note": _worker_note(config.device, live_queues),
        "matmul_weights": None if op_types is None else op_types.get("MatMul", 0) > 0,
        "trainable_layers": (
            None if op_types is None else sum(op_types.get(op, 0) for op in _TRAINABLE)
        ),
        "refused": {},
    }

    # The fallback measures the original through the same evaluation and benchmark: if that
    # is refused, the dataset does not fit the model and no trial could run.
    try:
        _check(model, datasets, spec, config, graph_fallback(), facts)
    except OptimizerError as exc:
        raise type(exc)(f"nothing can be searched: {exc.message}") from exc

    candidates = candidates_for(config, structure=structure, samples=dataset.num_samples)
    applicable: dict[str, str] = {}
    ruled_out: dict[str, str] = {}
    refused: dict[str, str] = {}
    for candidate in candidates:
        family = candidate.family
        if family in ruled_out:
            continue
        reason = _family_rule(family, config=config, model=model, facts=facts)
        if reason is not None:
            ruled_out[family] = reason
            continue
        try:
            _check(model, datasets, spec, config, candidate, facts)
        except OptimizerError as exc:
            facts["refused"][candidate.stem] = exc.message
            refused.setdefault(family, exc.message)
            continue
        applicable.setdefault(family, candidate.why)
    # A family refused for one candidate and accepted for another is tried.
    skipped = ruled_out | {f: why for f, why in refused.items() if f not in applicable}
    if not applicable:
        reasons = "; ".join(f"{label(family)}: {why}" for family, why in skipped.items())
        raise UnsupportedError(f"no technique applies to this model: {reasons}")
    return Preflight(
        structure=structure,
        facts=facts,
        applicable={"graph": graph_fallback().why, **applicable},
        skipped=skipped,
    )


def _worker_note(device: str, live_queues: Collection[str]) -> str | None:
    queue = "gpu" if device == "cuda" else "cpu"
    if queue in live_queues:
        return None
    return (
        f"no live worker serves the {queue} queue now: the trials wait in the queue until one "
        "starts"
    )


def _family_rule(
    family: str, *, config: AutoConfig, model: ModelInfo, facts: Mapping[str, Any]
) -> str | None:
    """Why `family` is not tried on this model, or None when it is."""
    needed = technique(family)
    if needed not in config.allow:
        return f"`allow` does not include '{needed}'"
    if needed == "quantize" and (model.opset or 0) < MIN_QUANTIZE_OPSET:
        return (
            f"quantization needs opset {MIN_QUANTIZE_OPSET} or newer and the model uses opset "
            f"{model.opset}; re-export it with opset >= 13"
        )
    if family == "fp16" and config.device != "cuda":
        return (
            "fp16 runs slower than float32 on CPUs in onnxruntime (most of its CPU kernels "
            "have no float16 form and cast back and forth); it is tried with device 'cuda'"
        )
    if family == "int4_weight_only" and not facts["matmul_weights"]:
        return (
            "int4 weight-only quantizes MatMul weights, and this model has no MatMul"
            if facts["matmul_weights"] is False
            else "int4 weight-only quantizes MatMul weights, and the model's ops are not known"
        )
    if family == "int8_weight_only" and config.objective == "latency":
        return (
            "int8 weight-only dequantizes the weights and computes in float: smaller, not "
            "faster; it is tried for objective 'size' or 'balanced'"
        )
    if needed in ("prune", "distill"):
        if not facts["has_labels"]:
            return (
                f"{label(family)} trains the model and needs labels, and dataset "
                f"'{config.dataset_id}' has none"
            )
        if facts["trainable_layers"] == 0:
            return f"{label(family)} trains Conv, Gemm and MatMul layers, and this model has none"
    return None


def _check(
    model: ModelInfo,
    datasets: Mapping[str, DatasetInfo],
    spec: PipelineSpec,
    config: AutoConfig,
    candidate: Candidate,
    facts: Mapping[str, Any],
) -> None:
    """The job-submission checks on the candidate's rung-0 spec."""
    data = trial_spec(
        spec,
        config,
        candidate.pass_list(),
        rung=0,
        batch_size=int(facts["batch_size"]),
        samples=int(facts["samples"]),
        metric=str(facts["metric"]),
    )
    try:
        trial = PipelineSpec.model_validate(data)
    except ValidationError as exc:
        raise UnsupportedError(f"{label(candidate.family)} cannot be set up: {exc}") from exc
    check_spec(model, trial, datasets)
