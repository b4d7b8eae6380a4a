"""Synthetic model and dataset descriptions and trial outcomes for the auto search tests: the
same shapes the service hands the search policy (ModelInfo, DatasetInfo, job results)."""

from __future__ import annotations

from typing import Any

from optimizers.auto.preflight import Preflight, preflight
from optimizers.auto.search import TrialOutcome, TrialPlan
from optimizers.config import PipelineSpec
from optimizers.results import ArrayInfo, DatasetInfo, ModelInfo, TensorInfo

OP_TYPES = {
    "transformer": {
        "MatMul": 36,
        "Softmax": 4,
        "LayerNormalization": 8,
        "Erf": 4,
        "Add": 52,
        "Reshape": 24,
        "Transpose": 16,
        "Gemm": 1,
    },
    "cnn": {"Conv": 5, "Relu": 5, "GlobalAveragePool": 1, "Flatten": 1, "Gemm": 1},
    "mlp": {"Gemm": 3, "Relu": 2},
}
SHAPES = {"transformer": [128, 384], "cnn": [3, 32, 32], "mlp": [784]}


def model_info(
    structure: str = "transformer",
    *,
    opset: int = 17,
    batch: int | str = "batch",
    op_types: dict[str, int] | str | None = "default",
) -> ModelInfo:
    shape = SHAPES.get(structure, [16])
    return ModelInfo(
        format="onnx",
        opset=opset,
        ir_version=8,
        producer="pytorch",
        inputs=[TensorInfo(name="x", dtype="float32", shape=[batch, *shape])],
        outputs=[TensorInfo(name="logits", dtype="float32", shape=[batch, 10])],
        parameter_count=1_000_000,
        size_bytes=4_000_000,
        op_types=OP_TYPES.get(structure) if op_types == "default" else op_types,  # type: ignore[arg-type]
    )


def dataset_info(
    structure: str = "transformer", *, samples: int = 512, labels: bool = True
) -> DatasetInfo:
    shape = SHAPES.get(structure, [16])
    return DatasetInfo(
        arrays={"x": ArrayInfo(dtype="float32", shape=[samples, *shape])},
        num_samples=samples,
        has_labels=labels,
        label_dtype="int64" if labels else None,
        size_bytes=samples * 4,
    )


def auto_spec(**fields: Any) -> PipelineSpec:
    return PipelineSpec.model_validate({"passes": [{"kind": "auto", "dataset_id": "d", **fields}]})


def plan_for(
    structure: str = "transformer",
    *,
    labels: bool = True,
    live_queues: tuple[str, ...] = ("cpu",),
    **fields: Any,
) -> tuple[PipelineSpec, Preflight]:
    """A search and its preflight; `eval_dataset_id="e"` adds a held-out dataset `e`."""
    spec = auto_spec(**fields)
    datasets = {"d": dataset_info(structure, labels=labels)}
    if fields.get("eval_dataset_id") == "e":
        datasets["e"] = dataset_info(structure, labels=labels)
    pre = preflight(model_info(structure), datasets, spec, live_queues=live_queues)
    return spec, pre


def result(
    *,
    speedup: float,
    interval: tuple[float, float] | None = None,
    size_ratio: float = 0.26,
    drop: float = 0.002,
    max_drop: float = 0.01,
    batch: int = 8,
    metric: str = "fidelity",
    worst_nodes: list[str] | None = None,
    suggested: list[str] | None = None,
    kept_float: list[str] | None = None,
    mixed_drop: float = 0.0,
    mixed_max_drop: float = 0.008,
    met: bool = True,
) -> dict[str, Any]:
    """A job result as a worker stores it (worker/jobproc.py, optimizers/measure/verdict.py)."""
    low, high = interval or (round(speedup - 0.05, 3), round(speedup + 0.05, 3))
    comparison = {
        "size_ratio": size_ratio,
        "speedup_p50": {str(batch): speedup},
        "speedup_interval": {str(batch): [low, high]},
        "accuracy_drop": drop if metric == "accuracy" else None,
        "metric": metric,
        "drop": drop,
        "max_drop": max_drop,
        "slower_than_baseline": high < 1,
        "within_tolerance": drop <= max_drop,
        "verdict": f"{speedup}x at batch {batch}",
    }
    passes: list[dict[str, Any]] = [{"kind": "quantize", "method": "static"}]
    if kept_float is not None:
        # A quantize pass in scope `mixed` (optimizers/quantization/mixed.py's details).
        passes[0]["details"] = {
            "scope": "mixed",
            "metric": metric,
            "max_drop": mixed_max_drop,
            "drop": mixed_drop,
            "met_max_drop": met,
            "kept_float": [
                {"node": node, "op_type": "Gemm", "reason": "sensitivity rank"}
                for node in kept_float
            ],
        }
    if worst_nodes is not None or suggested is not None:
        passes[0]["sensitivity"] = {
            "status": "ok",
            "error": None,
            "worst_nodes": worst_nodes or [],
            "suggested_exclude": suggested or [],
            "artifact": "pass1-sensitivity.json",
        }
    return {
        "metrics": {"comparison": comparison, "fidelity": {"cosine_mean": 1 - drop}},
        "notes": [],
        "passes": passes,
        "stages": [],
        "source": None,
    }


def outcome(
    plan: TrialPlan,
    *,
    status: str = "succeeded",
    error: str | None = None,
    **numbers: Any,
) -> TrialOutcome:
    return TrialOutcome(
        key=plan.key,
        family=plan.family,
        rung=plan.rung,
        spec=plan.spec,
        job_id=f"job-{plan.key}",
        status=status,
        result=result(**numbers) if status == "succeeded" else None,
        error=error,
    )
