"""Structured pruning of a transformer: the quantization bench's encoder (4 post-norm layers,
d_model 384, 6 heads, feed-forward 1536, seq 128), pruned at `ratio` 0.5 through
`run_pipeline` exactly as a worker runs a job. Prints parameters, size, p50 latency at
batch 8, the output cosine and top-1 agreement with the original on held-out inputs, and
how many heads each attention block kept.

    .venv/bin/python bench/prune_transformer.py [--threads 2] [--iterations 50]
        [--epochs 6] [--train-samples 1024] [--json out.json]

Recipes: `ffn_only` keeps every head (the in-projections are excluded, so only the
feed-forward hidden units go); `heads_and_ffn` removes half the heads too; and
`heads_and_ffn_finetune` adds recovery training with the unpruned model as teacher. The
inputs are random (the encoder is not trained on a task), and the labels are the original
model's top-1 class, so agreement is fidelity to the original, not task accuracy.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.models import MODELS, export_model, make_dataset  # noqa: E402
from optimizers.config import PipelineSpec  # noqa: E402
from optimizers.errors import OptimizerError  # noqa: E402
from optimizers.model_info import inspect_model  # noqa: E402
from optimizers.pipeline import preload, run_pipeline  # noqa: E402

TRAIN, EVALUATION = "train", "evaluation"
RATIO = 0.5


def in_projections(model_path: Path) -> list[str]:
    """The MatMul nodes of the fused query/key/value projections: excluding them keeps the
    heads."""
    return [
        node.name
        for node in onnx.load(str(model_path)).graph.node
        if node.op_type == "MatMul" and node.name.endswith("self_attn/MatMul")
    ]


def recipes(model_path: Path, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    structured = {"kind": "prune", "method": "structured", "ratio": RATIO}
    return {
        "ffn_only": {**structured, "exclude_layers": in_projections(model_path)},
        "heads_and_ffn": structured,
        "heads_and_ffn_finetune": {
            **structured,
            "finetune": {
                "dataset_id": TRAIN,
                "epochs": args.epochs,
                "learning_rate": args.learning_rate,
                "batch_size": 16,
                "validation_split": 0.1,
            },
        },
    }


def run_recipe(
    name: str,
    prune: dict[str, Any],
    *,
    model_path: Path,
    datasets: dict[str, Path],
    workdir: Path,
    args: argparse.Namespace,
) -> dict[str, Any]:
    spec = {
        "passes": [prune],
        "evaluate": {"dataset_id": EVALUATION, "metric": "fidelity", "max_drop": 0.05},
        "benchmark": {
            "batch_sizes": [8],
            "warmup": args.warmup,
            "iterations": args.iterations,
            "threads": args.threads,
        },
    }
    row: dict[str, Any] = {"recipe": name}
    began = time.perf_counter()
    try:
        result = run_pipeline(
            model_path=model_path,
            spec=PipelineSpec.model_validate(spec),
            datasets=datasets,
            workdir=workdir,
        )
    except OptimizerError as exc:
        row["error"] = f"{type(exc).__name__}: {exc.message}"
    except Exception as exc:  # a bench run reports every failure and goes on
        row["error"] = f"{type(exc).__name__}: {exc}"
        if args.verbose:
            traceback.print_exc()
    else:
        metrics = result.metrics
        details = result.passes[-1]["details"]
        speedups = metrics["comparison"]["speedup_p50"]
        row.update(
            parameters_before=inspect_model(model_path).parameter_count,
            parameters=inspect_model(result.model_path).parameter_count,
            size_bytes=metrics["optimized"]["size_bytes"],
            p50_ms_b8=_p50(metrics["optimized"]),
            baseline_p50_ms_b8=_p50(metrics["baseline"]),
            speedup_b8=float(speedups.get(8, speedups.get("8"))),
            cosine=metrics["fidelity"]["cosine_mean"],
            agreement=metrics["optimized"]["accuracy"],
            heads=sorted({c["after"] for c in details.get("attention_heads", {}).values()}),
            blocks_pruned=len(details.get("attention_heads", {})),
            left_whole=len(details.get("left_whole", [])),
            notes=result.notes,
        )
    row["seconds"] = time.perf_counter() - began
    return row


def _p50(measured: dict[str, Any]) -> float:
    latency = measured["latency_ms"]
    return float((latency.get(8) or latency.get("8"))["p50"])


def print_table(rows: list[dict[str, Any]]) -> None:
    print(
        "| recipe | heads per block | parameters | size MB | p50 b8 ms | speedup b8 | "
        "cosine | top-1 agreement | seconds |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        if "error" in row:
            print(f"| {row['recipe']} | ERROR {row['error'][:200]} |||||||| ")
            continue
        heads = "6" if not row["heads"] else ",".join(str(h) for h in row["heads"])
        print(
            f"| {row['recipe']} | {heads} ({row['blocks_pruned']} blocks pruned) | "
            f"{row['parameters_before'] / 1e6:.2f} M -> {row['parameters'] / 1e6:.2f} M | "
            f"{row['size_bytes'] / 1e6:.1f} | {row['baseline_p50_ms_b8']:.1f} -> "
            f"{row['p50_ms_b8']:.1f} | {row['speedup_b8']:.2f}x | {row['cosine']:.3f} | "
            f"{row['agreement']:.1%} | {row['seconds']:.0f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iterations", type=int, default=50, help="timed runs")
    parser.add_argument("--warmup", type=int, default=5, help="untimed runs")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads")
    parser.add_argument("--epochs", type=int, default=6, help="fine-tuning epochs")
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--train-samples", type=int, default=1024)
    parser.add_argument("--eval-samples", type=int, default=256)
    parser.add_argument("--recipes", default="all", help="comma-separated, or 'all'")
    parser.add_argument("--json", type=Path, help="write every row here")
    parser.add_argument("--verbose", action="store_true", help="print tracebacks of failures")
    args = parser.parse_args()

    preload()
    gc.freeze()
    spec = MODELS["transformer"]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="modelpress-bench-") as tmp:
        tmp_path = Path(tmp)
        model_path = export_model(spec, tmp_path / "transformer.onnx")
        datasets = {
            TRAIN: make_dataset(
                spec, model_path, tmp_path / "train.npz", samples=args.train_samples, seed=1
            ),
            EVALUATION: make_dataset(
                spec, model_path, tmp_path / "eval.npz", samples=args.eval_samples, seed=2
            ),
        }
        available = recipes(model_path, args)
        names = list(available) if args.recipes == "all" else args.recipes.split(",")
        print(f"# {spec.description}; structured ratio {RATIO}", flush=True)
        for name in names:
            workdir = tmp_path / name
            workdir.mkdir()
            rows.append(
                run_recipe(
                    name,
                    available[name],
                    model_path=model_path,
                    datasets=datasets,
                    workdir=workdir,
                    args=args,
                )
            )
            print(f"  {name}: done in {rows[-1]['seconds']:.0f} s", flush=True)
    print_table(rows)
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2, default=str))


if __name__ == "__main__":
    main()
