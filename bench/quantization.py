"""Quantization recipes on small torch-exported models (MLP, CNN, transformer encoder), run
through `run_pipeline` exactly as a worker runs a job: size, p50 speedup at batch 1 and 8,
accuracy drop and output cosine against the float model.

    .venv/bin/python bench/quantization.py [--iterations 100] [--models transformer]
        [--recipes dynamic_per_channel,mixed] [--threads 0] [--json out.json]

A recipe that fails prints its error in its row; the other rows still run.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.models import MODELS, BenchModel, export_model, make_dataset  # noqa: E402
from optimizers.config import PipelineSpec  # noqa: E402
from optimizers.errors import OptimizerError  # noqa: E402
from optimizers.pipeline import preload, run_pipeline  # noqa: E402

CALIBRATION = "calibration"
EVALUATION = "evaluation"
#: Largest acceptable quality loss in every recipe: 1 - mean cosine (or accuracy points).
MAX_DROP = 0.01
#: The goal for the transformer encoder with dynamic per-channel int8.
GOAL_MODEL, GOAL_RECIPE = "transformer", "dynamic_per_channel"
GOAL_SPEEDUP_B8, GOAL_SIZE_RATIO, GOAL_COSINE = 1.7, 0.27, 0.99


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    quantize: dict[str, Any]
    #: Only models whose weights sit in MatMul nodes (int4 weight-only quantizes MatMul).
    matmul_only: bool = False


def _calibration(samples: int) -> dict[str, Any]:
    return {"dataset_id": CALIBRATION, "samples": samples, "method": "minmax"}


def recipes(*, calibration_samples: int, mixed_metric: str) -> dict[str, Recipe]:
    calibration = _calibration(calibration_samples)
    return {
        recipe.name: recipe
        for recipe in (
            Recipe("dynamic", "dynamic int8, per tensor", {"method": "dynamic"}),
            Recipe(
                "dynamic_per_channel",
                "dynamic int8, per-channel weights",
                {"method": "dynamic", "per_channel": True},
            ),
            Recipe(
                "static_qdq_per_channel",
                f"static QDQ int8, per channel, minmax on {calibration_samples} samples",
                {"method": "static", "per_channel": True, "calibration": calibration},
            ),
            Recipe("fp16", "float16 weights and compute", {"method": "fp16"}),
            Recipe(
                "int4_weight_only",
                "int4 MatMul weights, block 32, symmetric",
                {"method": "int4_weight_only"},
                matmul_only=True,
            ),
            Recipe(
                "mixed",
                f"static per-channel, mixed precision, max {mixed_metric} drop {MAX_DROP}",
                {
                    "method": "static",
                    "per_channel": True,
                    "scope": "mixed",
                    "calibration": calibration,
                    "mixed": {"metric": mixed_metric, "max_drop": MAX_DROP},
                },
            ),
        )
    }


@dataclass
class Row:
    model: str
    recipe: str
    spec: dict[str, Any]
    seconds: float = 0.0
    metrics: dict[str, Any] | None = None
    notes: list[str] | None = None
    passes: list[dict[str, Any]] | None = None
    error: str | None = None


def run_recipe(
    *,
    model: BenchModel,
    recipe: Recipe,
    model_path: Path,
    datasets: dict[str, Path],
    workdir: Path,
    args: argparse.Namespace,
) -> Row:
    spec_json: dict[str, Any] = {
        "passes": [{"kind": "quantize", **recipe.quantize}],
        # Quality is judged on held-out data (not the calibration samples): cosine of the
        # logits is the main number; accuracy is against the float model's own top-1.
        "evaluate": {
            "dataset_id": EVALUATION,
            "metric": "fidelity",
            "max_drop": MAX_DROP,
            "samples": args.eval_samples,
        },
        "benchmark": {
            "batch_sizes": [1, 8],
            "warmup": args.warmup,
            "iterations": args.iterations,
            "threads": args.threads,
        },
    }
    row = Row(model=model.name, recipe=recipe.name, spec=spec_json)
    began = time.perf_counter()
    try:
        spec = PipelineSpec.model_validate(spec_json)
        result = run_pipeline(model_path=model_path, spec=spec, datasets=datasets, workdir=workdir)
    except OptimizerError as exc:
        row.error = f"{type(exc).__name__}: {exc.message}"
    except Exception as exc:  # a bench run reports every failure and goes on to the next
        row.error = f"{type(exc).__name__}: {exc}"
        if args.verbose:
            traceback.print_exc()
    else:
        row.metrics, row.notes, row.passes = result.metrics, result.notes, result.passes
    row.seconds = time.perf_counter() - began
    return row


def _cells(row: Row) -> list[str]:
    if row.metrics is None:
        return [row.model, row.recipe, f"ERROR {_one_line(row.error or '')}", "", "", "", "", ""]
    comparison = row.metrics["comparison"]
    speedup = comparison["speedup_p50"]
    drop = comparison["accuracy_drop"]
    return [
        row.model,
        row.recipe,
        f"{comparison['size_ratio']:.3f}",
        f"{speedup['1']:.2f}x",
        f"{speedup['8']:.2f}x",
        f"{drop * 100:+.1f} pt / {row.metrics['fidelity']['cosine_mean']:.5f}"
        if drop is not None
        else f"n/a / {row.metrics['fidelity']['cosine_mean']:.5f}",
        _yes_no(comparison["within_tolerance"]),
        _yes_no(comparison["slower_than_baseline"]),
    ]


def _one_line(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _yes_no(value: bool | None) -> str:
    return "n/a" if value is None else ("yes" if value else "no")


def print_table(rows: list[Row]) -> None:
    header = [
        "model",
        "recipe",
        "size ratio",
        "p50 speedup b1",
        "p50 speedup b8",
        "acc drop / cosine",
        "within tolerance",
        "slower than baseline",
    ]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(_cells(row)) + " |")


def goal_lines(rows: list[Row]) -> list[str]:
    lines = []
    goal = next((r for r in rows if (r.model, r.recipe) == (GOAL_MODEL, GOAL_RECIPE)), None)
    if goal is not None:
        prefix = "transformer encoder, dynamic per-channel int8:"
        if goal.metrics is None:
            lines.append(f"{prefix} FAILED ({_one_line(goal.error or '')}) -> NOT MET")
        else:
            comparison = goal.metrics["comparison"]
            speedup = comparison["speedup_p50"]["8"]
            ratio = comparison["size_ratio"]
            cosine = goal.metrics["fidelity"]["cosine_mean"]
            met = speedup >= GOAL_SPEEDUP_B8 and ratio <= GOAL_SIZE_RATIO and cosine >= GOAL_COSINE
            lines.append(
                f"{prefix} speedup at batch 8 {speedup:.2f} (goal >= {GOAL_SPEEDUP_B8}), size "
                f"ratio {ratio:.3f} (goal <= {GOAL_SIZE_RATIO}), cosine {cosine:.4f} (goal >= "
                f"{GOAL_COSINE}) -> {'MET' if met else 'NOT MET'}"
            )
    for row in rows:
        if row.recipe == "mixed":
            lines.append(f"{row.model}, mixed: {_mixed_outcome(row)}")
    return lines


def _mixed_outcome(row: Row) -> str:
    """Whether the mixed model is within its own `max_drop`, on the evaluation data, and
    what the pass itself said (e.g. that no assignment could reach it)."""
    if row.metrics is None:
        return f"FAILED: {_one_line(row.error or '')}"
    mixed = row.spec["passes"][0]["mixed"]
    metric, max_drop = mixed["metric"], mixed["max_drop"]
    if metric == "accuracy":
        drop = row.metrics["comparison"]["accuracy_drop"]
    else:
        drop = 1.0 - row.metrics["fidelity"]["cosine_mean"]
    verdict = "met" if drop is not None and drop <= max_drop + 1e-9 else "did NOT meet"
    said = [_one_line(note, 240) for note in (row.notes or [])]
    details = (row.passes or [{}])[0].get("details") or {}
    summary = {
        key: len(value) if isinstance(value, list) else value
        for key, value in details.items()
        if key in ("met_max_drop", "drop", "kept_float", "excluded_nodes", "rounds")
    }
    text = f"{verdict} max_drop {max_drop} ({metric} drop {drop:.4g} on the evaluation set)"
    if summary:
        text += f"; the pass reported {summary} (lists counted)"
    if said:
        text += "; the pass said: " + " | ".join(said)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iterations", type=int, default=100, help="timed runs per batch size")
    parser.add_argument("--warmup", type=int, default=10, help="untimed runs per batch size")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated")
    parser.add_argument("--recipes", default="all", help="comma-separated, or 'all'")
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads; 0: cores")
    parser.add_argument("--calibration-samples", type=int, default=64)
    parser.add_argument("--eval-samples", type=int, default=128)
    parser.add_argument("--mixed-metric", choices=["fidelity", "accuracy"], default="fidelity")
    parser.add_argument("--json", type=Path, help="write raw metrics of every row here")
    parser.add_argument("--verbose", action="store_true", help="print tracebacks of failures")
    args = parser.parse_args()

    available = recipes(
        calibration_samples=args.calibration_samples, mixed_metric=args.mixed_metric
    )
    model_names = [name.strip() for name in args.models.split(",") if name.strip()]
    recipe_names = (
        list(available)
        if args.recipes == "all"
        else [name.strip() for name in args.recipes.split(",") if name.strip()]
    )
    unknown = [n for n in model_names if n not in MODELS] + [
        n for n in recipe_names if n not in available
    ]
    if unknown:
        parser.error(
            f"unknown model or recipe: {', '.join(unknown)} (models: {', '.join(MODELS)}; "
            f"recipes: {', '.join(available)})"
        )

    # Prepared like a worker: heavy lazy imports paid once, garbage collector frozen.
    preload()
    gc.freeze()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="modelpress-bench-") as tmp:
        tmp_path = Path(tmp)
        for model_name in model_names:
            model = MODELS[model_name]
            model_path = export_model(model, tmp_path / f"{model.name}.onnx")
            samples = max(args.calibration_samples, args.eval_samples)
            datasets = {
                CALIBRATION: make_dataset(
                    model, model_path, tmp_path / f"{model.name}.calib.npz", samples=samples, seed=1
                ),
                EVALUATION: make_dataset(
                    model, model_path, tmp_path / f"{model.name}.eval.npz", samples=samples, seed=2
                ),
            }
            print(
                f"# {model.name}: {model.description}; "
                f"{model_path.stat().st_size / 1e6:.1f} MB float32",
                flush=True,
            )
            for recipe_name in recipe_names:
                recipe = available[recipe_name]
                if recipe.matmul_only and not model.has_matmul_weights:
                    continue
                row = run_recipe(
                    model=model,
                    recipe=recipe,
                    model_path=model_path,
                    datasets=datasets,
                    workdir=tmp_path / f"{model.name}-{recipe.name}",
                    args=args,
                )
                # Each row as soon as it is measured, and the raw metrics so far: a full run
                # takes long on a small machine and may be cut short.
                print(f"#   {' | '.join(_cells(row))} ({row.seconds:.0f} s)", flush=True)
                rows.append(row)
                if args.json:
                    _write_json(args.json, rows)

    print()
    print(
        f"iterations {args.iterations}, warm-up {args.warmup}, threads "
        f"{args.threads or 'default'}, evaluation {args.eval_samples} held-out samples; "
        "speedup = float p50 / quantized p50; acc drop in points against the float model's "
        "own top-1; cosine of the logits"
    )
    print_table(rows)
    print()
    for line in goal_lines(rows):
        print(line)
    if args.json:
        print(f"raw metrics: {args.json}")


def _write_json(path: Path, rows: list[Row]) -> None:
    path.write_text(json.dumps([row.__dict__ for row in rows], indent=2, default=str))


if __name__ == "__main__":
    main()
