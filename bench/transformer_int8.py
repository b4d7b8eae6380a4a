"""int8 recipes for transformers, every variant timed side by side in one process: float,
dynamic per-channel int8, dynamic per-channel with SmoothQuant, the plain static recipe, the
static `transformer` preset with every op's output rounded to int8 (`weight_layers_only:
false`), the preset itself, and per-node mixed precision (the preset with the nodes the
sensitivity report ranks worst quantized dynamically instead). Prints, per variant, the
paired speedup against float at one batch size with its 95% interval, and the cosine of the
first output on held-out samples.

    .venv/bin/python bench/transformer_int8.py [--batch 8] [--rounds 12] [--per-node 6]
        [--per-node-precision int8_dynamic] [--calibration-samples 128] [--json out.json]
        [--minilm FOLDER]

`--minilm FOLDER` measures all-MiniLM-L6-v2 (a real sentence-embedding model, see
bench/minilm.py for how to get the folder offline) instead of the bench encoder; its
fidelity is the cosine of the sentence embeddings.

Timing: after a warm-up, rounds of blocks; in each round every variant runs one untimed and
`--block` timed runs in turn, the order rotating every round, so drift in machine load hits
every variant alike (the block order of optimizers.measure.benchmark, for more than two
models). The speedup of a variant is the median of float/variant over runs paired by round
and position, with the distribution-free interval of `paired_speedup`.
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
from optimizers.config import parse_pass  # noqa: E402
from optimizers.measure.benchmark import paired_speedup  # noqa: E402
from optimizers.measure.evaluate import fidelity_on_inputs  # noqa: E402
from optimizers.measure.runtime import CPU, create_session, default_threads  # noqa: E402
from optimizers.model_info import inspect_model  # noqa: E402
from optimizers.quantization.sensitivity import analysis_feeds, analyze  # noqa: E402
from optimizers.registry import run_pass  # noqa: E402
from optimizers.results import PassContext  # noqa: E402

CALIBRATION, EVALUATION = "calibration", "evaluation"
GOAL_SPEEDUP, GOAL_COSINE = 1.9, 0.997


def recipes(calibration_samples: int) -> dict[str, dict[str, Any]]:
    calibration = {"dataset_id": CALIBRATION, "samples": calibration_samples}
    return {
        "dynamic_per_channel": {"method": "dynamic", "per_channel": True},
        "static_per_channel": {
            "method": "static",
            "per_channel": True,
            "calibration": calibration,
        },
        "dynamic_smooth": {
            "method": "dynamic",
            "per_channel": True,
            "smooth_quant": {"dataset_id": CALIBRATION, "alpha": 0.8},
        },
        "static_all_ops": {
            "method": "static",
            "preset": "transformer",
            "weight_layers_only": False,
            "calibration": calibration,
        },
        "static_transformer": {
            "method": "static",
            "preset": "transformer",
            "calibration": calibration,
        },
    }


def quantize(
    model_path: Path, fields: dict[str, Any], datasets: dict[str, Path], workdir: Path
) -> tuple[Path, dict[str, Any], float]:
    began = time.perf_counter()
    config = parse_pass({"kind": "quantize", **fields})
    result = run_pass(model_path, config, PassContext(workdir=workdir, datasets=datasets))
    return result.model_path, result.details, time.perf_counter() - began


def sensitive_nodes(
    float_path: Path, quantized: Path, dataset: Path, count: int, *, already_float: list[str]
) -> list[str]:
    """The `count` int8 nodes the sensitivity report ranks worst (nodes the recipe already
    keeps float are ranked too, by the error that reaches them: they are skipped)."""
    report = analyze(
        float_path,
        quantized,
        analysis_feeds(inspect_model(float_path), dataset=dataset, samples=32),
        threads=default_threads(),
    )
    if report["status"] != "ok":
        raise SystemExit(f"sensitivity report failed: {report['error']}")
    names: list[str] = []
    for entry in report["nodes"]:
        if entry["quantized"] and entry["op_type"] in ("MatMul", "Gemm"):
            names.extend(name for name in entry["exclude"] if name not in names + already_float)
        if len(names) >= count:
            break
    return names[:count]


def time_all(
    paths: dict[str, Path], feeds: dict[str, np.ndarray], *, rounds: int, block: int, warmup: int
) -> dict[str, list[int]]:
    threads = default_threads()
    sessions = {
        name: create_session(path, provider=CPU, threads=threads) for name, path in paths.items()
    }
    for session in sessions.values():
        for _ in range(warmup):
            session.run(None, feeds)
    names = list(sessions)
    times: dict[str, list[int]] = {name: [] for name in names}
    for index in range(rounds):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            session = sessions[name]
            session.run(None, feeds)  # re-warm: the previous variant's weights are in cache
            for _ in range(block):
                began = time.perf_counter_ns()
                session.run(None, feeds)
                times[name].append(time.perf_counter_ns() - began)
        print(f"#   round {index + 1}/{rounds}", flush=True)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--block", type=int, default=5, help="timed runs per variant per round")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--calibration-samples", type=int, default=128)
    parser.add_argument("--eval-samples", type=int, default=128)
    parser.add_argument("--per-node", type=int, default=6, help="sensitive nodes kept out")
    parser.add_argument(
        "--per-node-precision", choices=["float", "fp16", "int8_dynamic"], default="int8_dynamic"
    )
    parser.add_argument("--json", type=Path)
    parser.add_argument("--minilm", type=Path, help="folder of all-MiniLM-L6-v2 (see above)")
    args = parser.parse_args()

    gc.freeze()
    with tempfile.TemporaryDirectory(prefix="modelpress-transformer-int8-") as tmp:
        folder = Path(tmp)
        if args.minilm:
            from bench import minilm

            description = "all-MiniLM-L6-v2, 6 layers, hidden 384, 12 heads, seq 128"
            float_path = minilm.export_minilm(args.minilm, folder / "minilm.onnx")
            datasets = {
                CALIBRATION: minilm.make_dataset(
                    args.minilm, folder / "calib.npz", samples=args.calibration_samples, seed=1
                ),
                EVALUATION: minilm.make_dataset(
                    args.minilm, folder / "eval.npz", samples=args.eval_samples, seed=2
                ),
            }
        else:
            model = MODELS["transformer"]
            description = f"bench encoder: {model.description}"
            float_path = export_model(model, folder / "encoder.onnx")
            datasets = {
                CALIBRATION: make_dataset(
                    model,
                    float_path,
                    folder / "calib.npz",
                    samples=args.calibration_samples,
                    seed=1,
                ),
                EVALUATION: make_dataset(
                    model, float_path, folder / "eval.npz", samples=args.eval_samples, seed=2
                ),
            }
        paths: dict[str, Path] = {"float": float_path}
        specs: dict[str, dict[str, Any]] = {"float": {}}
        seconds: dict[str, float] = {}
        details: dict[str, dict[str, Any]] = {}
        for name, fields in recipes(args.calibration_samples).items():
            paths[name], details[name], seconds[name] = quantize(
                float_path, fields, datasets, folder / name
            )
            specs[name] = fields
            print(f"# quantized {name} in {seconds[name]:.0f} s", flush=True)
        chosen = sensitive_nodes(
            float_path,
            paths["static_transformer"],
            datasets[CALIBRATION],
            args.per_node,
            already_float=details["static_transformer"]["keep_float"],
        )
        mixed = {
            **recipes(args.calibration_samples)["static_transformer"],
            "per_node": {name: args.per_node_precision for name in chosen},
        }
        paths["mixed_per_node"], details["mixed_per_node"], seconds["mixed_per_node"] = quantize(
            float_path, mixed, datasets, folder / "mixed_per_node"
        )
        specs["mixed_per_node"] = mixed
        print(f"# mixed_per_node keeps {chosen} at {args.per_node_precision}", flush=True)

        fidelity: dict[str, dict[str, Any]] = {}
        eval_feeds = list(
            analysis_feeds(
                inspect_model(float_path),
                dataset=datasets[EVALUATION],
                samples=args.eval_samples,
            )
        )
        for name, path in paths.items():
            fidelity[name] = fidelity_on_inputs(
                float_path, path, eval_feeds, providers=[CPU], threads=default_threads()
            )
        with np.load(datasets[EVALUATION]) as arrays:
            feeds = {
                name: arrays[name][: args.batch]
                for name in (i.name for i in inspect_model(float_path).inputs)
            }
        times = time_all(
            paths,
            feeds,
            rounds=args.rounds,
            block=args.block,
            warmup=args.warmup,
        )
        sizes = {name: path.stat().st_size for name, path in paths.items()}

    rows: list[dict[str, Any]] = []
    print()
    print(
        f"{description}, batch {args.batch}, {args.rounds} rounds x "
        f"{args.block} timed runs per variant, threads {default_threads()}, cosine of the "
        f"first output on {args.eval_samples} held-out samples"
    )
    print("| variant | p50 ms | speedup (95% interval) | cosine mean | cosine min | size MB |")
    print("|---|---|---|---|---|---|")
    for name in paths:
        paired = paired_speedup(times["float"], times[name])
        p50 = float(np.median(times[name])) / 1e6
        cos = fidelity[name]
        rows.append(
            {
                "variant": name,
                "spec": specs[name],
                "p50_ms": p50,
                "speedup": paired,
                "fidelity": cos,
                "size_bytes": sizes[name],
                "details": details.get(name),
            }
        )
        print(
            f"| {name} | {p50:.1f} | {paired['median']:.2f}x ({paired['low']:.2f}-"
            f"{paired['high']:.2f}) | {cos['cosine_mean']:.5f} | {cos['cosine_min']:.5f} | "
            f"{sizes[name] / 1e6:.2f} |"
        )
    print()
    for row in rows[1:]:
        met = row["speedup"]["median"] >= GOAL_SPEEDUP and (
            row["fidelity"]["cosine_mean"] >= GOAL_COSINE
        )
        print(
            f"{row['variant']}: goal >= {GOAL_SPEEDUP}x at cosine >= {GOAL_COSINE}: "
            f"{'MET' if met else 'NOT MET'}"
        )
    print(f"mixed_per_node spec: {json.dumps(specs['mixed_per_node'])}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2, default=str))


if __name__ == "__main__":
    main()
