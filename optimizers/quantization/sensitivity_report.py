"""The report step of every quantize pass: per-node sensitivity of its output against its
input, kept as the pass's `sensitivity` artifact and summed up in the pass's record."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from optimizers.config import PassConfig
from optimizers.errors import OptimizerError
from optimizers.quantization.sensitivity import analysis_feeds, analyze, failed_report
from optimizers.results import PassResult, ReportContext


def sensitivity_report(
    baseline: Path, result: PassResult, config: PassConfig, ctx: ReportContext
) -> dict[str, Any]:
    """Write the sensitivity report (its input against its output) as JSON in the pass's
    workdir and add it to the pass's artifacts. A report that failed says why; the job goes
    on."""
    ctx.progress("analyzing", ctx.progress_at, f"pass {ctx.number}: measuring per-node sensitivity")
    dataset_ids = config.dataset_ids()
    if ctx.evaluate_dataset_id is not None:
        dataset_id: str | None = ctx.evaluate_dataset_id
        source = "evaluate_dataset"
    elif dataset_ids:
        dataset_id, source = dataset_ids[0], "pass_dataset"
    else:
        dataset_id, source = None, "synthetic_inputs"
    try:
        feeds = analysis_feeds(
            ctx.model,
            dataset=ctx.datasets[dataset_id] if dataset_id else None,
            input_shapes=ctx.input_shapes,
            layout=ctx.layout,
        )
        report = analyze(
            baseline,
            result.model_path,
            feeds,
            pass_config=config.as_submitted(),
            provider=ctx.provider,
            threads=ctx.threads,
        )
    except OptimizerError as exc:  # e.g. synthetic inputs for a model with symbolic dims
        report = failed_report(baseline, result.model_path, exc.message)
    report["inputs"] = {"source": source, "dataset_id": dataset_id}
    ctx.workdir.mkdir(parents=True, exist_ok=True)
    path = ctx.workdir / "sensitivity.json"
    path.write_text(json.dumps(report, indent=2, allow_nan=False))
    result.artifacts["sensitivity"] = path
    ranked = [node for node in report["nodes"] if node["quantized"]]
    return {
        "sensitivity": {
            "status": report["status"],
            "error": report["error"],
            "worst_nodes": [node["node"] for node in ranked[:3]],
            "suggested_exclude": report["suggested_exclude"]["nodes"],
            "artifact": f"pass{ctx.number}-sensitivity.json",
        }
    }
