"""The `graph_optimize` pass on a transformer encoder, alone and before int8, every
variant timed side by side in one process with plain onnxruntime sessions: float, graph
optimizations at level basic, onnxruntime's transformer fusions, fusions followed by dynamic
per-channel int8 and by the static `transformer` preset, and the same two int8 recipes
without fusions. Prints, per variant, the paired speedup against float at one batch size with
its 95% interval, the cosine of the model's output on held-out samples (the bench encoder's
logits of its mean-pooled encoding, the BERT-layout encoder's mean-pooled encoding), the
fused operators and the size.

    .venv/bin/python bench/graph_optimize.py [--batch 8] [--rounds 8] [--block 3]
        [--calibration-samples 128] [--encoder bench|bert] [--json out.json]

Timing as bench/transformer_int8.py: rounds of blocks, the variants' order rotating every
round, speedup = median of float/variant over runs paired by round and position.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.models import MODELS, export_model, make_dataset  # noqa: E402
from bench.transformer_int8 import CALIBRATION, EVALUATION, recipes, time_all  # noqa: E402
from optimizers.config import parse_pass  # noqa: E402
from optimizers.external_data import model_size_bytes  # noqa: E402
from optimizers.measure.benchmark import paired_speedup  # noqa: E402
from optimizers.measure.evaluate import fidelity_on_inputs  # noqa: E402
from optimizers.measure.runtime import CPU, default_threads  # noqa: E402
from optimizers.model_info import inspect_model  # noqa: E402
from optimizers.quantization.sensitivity import analysis_feeds  # noqa: E402
from optimizers.registry import run_pass  # noqa: E402
from optimizers.results import PassContext  # noqa: E402
from tests.models.bert_encoder import make_bert  # noqa: E402

GRAPH_BASIC = {"kind": "graph_optimize", "level": "basic"}
FUSIONS = {"kind": "graph_optimize", "transformer_fusions": True}


def variants(calibration_samples: int) -> dict[str, list[dict[str, Any]]]:
    """Each variant as the passes of a job spec, in order."""
    int8 = recipes(calibration_samples)
    dynamic = {"kind": "quantize", **int8["dynamic_per_channel"]}
    static = {"kind": "quantize", **int8["static_transformer"]}
    return {
        "graph_basic": [GRAPH_BASIC],
        "fusions": [FUSIONS],
        "fusions+dynamic_pc": [FUSIONS, dynamic],
        "fusions+static_transformer": [FUSIONS, static],
        "dynamic_pc": [dynamic],
        "static_transformer": [static],
    }


def apply(
    model_path: Path, passes: list[dict[str, Any]], datasets: dict[str, Path], workdir: Path
) -> tuple[Path, list[dict[str, Any]]]:
    """Run `passes` in turn, as the pipeline does; returns the last model and each pass's
    details."""
    details: list[dict[str, Any]] = []
    for index, fields in enumerate(passes):
        result = run_pass(
            model_path,
            parse_pass(fields),
            PassContext(workdir=workdir / f"pass{index + 1}", datasets=datasets),
        )
        model_path = result.model_path
        details.append(result.details)
    return model_path, details


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--block", type=int, default=3, help="timed runs per variant per round")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--calibration-samples", type=int, default=128)
    parser.add_argument("--eval-samples", type=int, default=64)
    parser.add_argument(
        "--encoder",
        choices=["bench", "bert"],
        default="bench",
        help="bench: the torch encoder of bench/models.py (nn.MultiheadAttention, whose "
        "attention the optimizer does not fuse); bert: an encoder of the same size built in "
        "the layout BERT exporters write (random weights), whose attention it fuses",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    gc.freeze()
    model = MODELS["transformer"]
    with tempfile.TemporaryDirectory(prefix="modelpress-graph-optimize-") as tmp:
        folder = Path(tmp)
        if args.encoder == "bert":
            layers, width = 4, model.sample_shape[1]
            float_path = make_bert(
                folder / "encoder.onnx",
                layers=layers,
                d_model=width,
                heads=6,
                seq=model.sample_shape[0],
            )
            description = (
                f"BERT-layout encoder {layers} layers, d_model {width}, 6 heads, ff "
                f"{4 * width}, seq {model.sample_shape[0]}, mean-pooled output"
            )
        else:
            float_path = export_model(model, folder / "encoder.onnx")
            description = f"bench encoder: {model.description}"
        datasets = {
            CALIBRATION: make_dataset(
                model, float_path, folder / "calib.npz", samples=args.calibration_samples, seed=1
            ),
            EVALUATION: make_dataset(
                model, float_path, folder / "eval.npz", samples=args.eval_samples, seed=2
            ),
        }
        paths: dict[str, Path] = {"float": float_path}
        specs: dict[str, list[dict[str, Any]]] = {"float": []}
        details: dict[str, list[dict[str, Any]]] = {"float": []}
        for name, passes in variants(args.calibration_samples).items():
            began = time.perf_counter()
            paths[name], details[name] = apply(float_path, passes, datasets, folder / name)
            specs[name] = passes
            print(f"# {name} made in {time.perf_counter() - began:.0f} s", flush=True)

        eval_feeds = list(
            analysis_feeds(
                inspect_model(float_path), dataset=datasets[EVALUATION], samples=args.eval_samples
            )
        )
        fidelity = {
            name: fidelity_on_inputs(
                float_path, path, eval_feeds, providers=[CPU], threads=default_threads()
            )
            for name, path in paths.items()
        }
        with np.load(datasets[EVALUATION]) as arrays:
            feeds = {model.input_name: arrays[model.input_name][: args.batch]}
        times = time_all(paths, feeds, rounds=args.rounds, block=args.block, warmup=args.warmup)
        sizes = {name: model_size_bytes(path) for name, path in paths.items()}

    rows: list[dict[str, Any]] = []
    print()
    print(
        f"{description}, batch {args.batch}, {args.rounds} rounds x "
        f"{args.block} timed runs per variant, threads {default_threads()}, cosine of the "
        f"output on {args.eval_samples} held-out samples"
    )
    print(
        "| variant | p50 ms | speedup (95% interval) | cosine mean | cosine min | size MB | fused |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in paths:
        paired = paired_speedup(times["float"], times[name])
        p50 = float(np.median(times[name])) / 1e6
        cos = fidelity[name]
        fused: dict[str, int] = next((d["fusions"] for d in details[name] if "fusions" in d), {})
        fused_text = ", ".join(f"{count} {op}" for op, count in fused.items()) or "-"
        rows.append(
            {
                "variant": name,
                "passes": specs[name],
                "p50_ms": p50,
                "speedup": paired,
                "fidelity": cos,
                "size_bytes": sizes[name],
                "details": details[name],
            }
        )
        print(
            f"| {name} | {p50:.1f} | {paired['median']:.2f}x ({paired['low']:.2f}-"
            f"{paired['high']:.2f}) | {cos['cosine_mean']:.5f} | {cos['cosine_min']:.5f} | "
            f"{sizes[name] / 1e6:.2f} | {fused_text} |"
        )
    print()
    print("fusions against none, paired in the same run (speedup of the fused variant):")
    for plain in ("dynamic_pc", "static_transformer"):
        paired = paired_speedup(times[plain], times[f"fusions+{plain}"])
        print(
            f"  fusions+{plain} vs {plain}: {paired['median']:.2f}x "
            f"({paired['low']:.2f}-{paired['high']:.2f})"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2, default=str))


if __name__ == "__main__":
    main()
