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
    spec = auto_spec(**fields)
    pre = preflight(
        model_info(structure),
        {"d": dataset_info(structure, labels=labels)},
        spec,
        live_queues=live_queues,
    )
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
