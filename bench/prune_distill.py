"""Pruning and distillation on real data: scikit-learn's bundled digits (1797 8x8 images,
upsampled to 32x32), a CNN of about 240 k parameters trained here, then each recipe run
through `run_pipeline` exactly as a worker runs a job. Prints accuracy on a held-out test
split, parameters, size and p50 latency at batch 8, and the goal lines.

    .venv/bin/python bench/prune_distill.py [--teacher-epochs 12] [--epochs 8]
        [--iterations 50] [--recipes all] [--json out.json]

Goals: structured 50% with fine-tuning at least 2x faster at batch 8 with accuracy within
1 point of the original; the distilled half-width student keeps at least 97% of the
teacher's accuracy and beats the same student trained without the teacher.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from optimizers.config import PipelineSpec  # noqa: E402
from optimizers.errors import OptimizerError  # noqa: E402
from optimizers.inspect import inspect_model  # noqa: E402
from optimizers.pipeline import preload, run_pipeline  # noqa: E402

TRAIN, TEST = "train", "test"
INPUT, OUTPUT = "image", "logits"
SIDE = 32
GOAL_STRUCTURED_SPEEDUP, GOAL_STRUCTURED_DROP = 2.0, 0.01
GOAL_STUDENT_KEEPS = 0.97


@dataclass
class Row:
    recipe: str
    description: str
    accuracy: float | None = None
    parameters: int | None = None
    size_bytes: int | None = None
    p50_ms_b8: float | None = None
    speedup_b8: float | None = None
    extra: str = ""
    seconds: float = 0.0
    error: str | None = None
    details: list[dict[str, Any]] = field(default_factory=list)


def load_digits_32(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Train and test images [N, 1, 32, 32] (standardised with train statistics) and labels."""
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)
    images = torch.nn.functional.interpolate(
        images, size=(SIDE, SIDE), mode="bilinear", align_corners=False
    ).numpy()
    labels = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=0.2, random_state=seed, stratify=labels
    )
    mean, std = float(x_train.mean()), float(x_train.std())
    return (x_train - mean) / std, (x_test - mean) / std, y_train, y_test


def build_cnn() -> Any:
    import torch

    def block(inputs: int, outputs: int) -> list[torch.nn.Module]:
        return [
            torch.nn.Conv2d(inputs, outputs, 3, padding=1, bias=False),
            torch.nn.BatchNorm2d(outputs),
            torch.nn.ReLU(),
        ]

    # Pooling early keeps training to minutes on a 2-core CPU (about 19 M multiply-adds per
    # image); the 128-channel layers hold most of the parameters.
    return torch.nn.Sequential(
        *block(1, 32),
        torch.nn.MaxPool2d(2),
        *block(32, 64),
        torch.nn.MaxPool2d(2),
        *block(64, 128),
        *block(128, 128),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(128, 10),
    )


def train_teacher(
    x_train: np.ndarray, y_train: np.ndarray, *, epochs: int, seed: int, path: Path
) -> Path:
    """Train the CNN with Adam and cross-entropy, export it to ONNX (batch axis dynamic)."""
    import torch

    torch.manual_seed(seed)
    model = build_cnn()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    inputs, labels = torch.from_numpy(x_train), torch.from_numpy(y_train)
    generator = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(inputs), generator=generator)
        total = 0.0
        for start in range(0, len(order), 64):
            batch = order[start : start + 64]
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(inputs[batch]), labels[batch])
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        print(f"#   teacher epoch {epoch + 1}/{epochs}: loss {total / len(order):.4f}", flush=True)
    model.eval()
    with torch.no_grad():
        torch.onnx.export(
            model,
            (inputs[:2],),
            str(path),
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    return path


def recipes(args: argparse.Namespace) -> dict[str, tuple[str, list[dict[str, Any]]]]:
    training = {
        "dataset_id": TRAIN,
        "epochs": args.epochs,
        "learning_rate": args.learning_rate,
        "batch_size": 64,
        "validation_split": 0.1,
        "patience": 3,
        "seed": args.seed,
    }
    student = {"derive": "width", "ratio": 0.5}
    return {
        "structured_50_finetune": (
            "structured 50% (L2 channels) + fine-tuning on labels",
            [{"kind": "prune", "method": "structured", "ratio": 0.5, "finetune": training}],
        ),
        "magnitude_50": (
            "magnitude 50% global, no fine-tuning",
            [{"kind": "prune", "method": "magnitude", "sparsity": 0.5}],
        ),
        "distilled_half_width": (
            f"half-width student distilled (T {args.temperature}, alpha {args.alpha})",
            [
                {
                    "kind": "distill",
                    "student": student,
                    **training,
                    "temperature": args.temperature,
                    "alpha": args.alpha,
                }
            ],
        ),
        "student_without_teacher": (
            "same half-width student, cross-entropy only (alpha 0)",
            [{"kind": "distill", "student": student, **training, "alpha": 0.0}],
        ),
    }


def run_recipe(
    name: str,
    description: str,
    passes: list[dict[str, Any]],
    *,
    model_path: Path,
    datasets: dict[str, Path],
    workdir: Path,
    args: argparse.Namespace,
) -> tuple[Row, dict[str, Any] | None]:
    spec = {
        "passes": passes,
        "evaluate": {"dataset_id": TEST, "metric": "accuracy", "max_drop": 0.01},
        "benchmark": {
            "batch_sizes": [8],
            "warmup": args.warmup,
            "iterations": args.iterations,
            "threads": args.threads,
        },
    }
    row = Row(recipe=name, description=description)
    began = time.perf_counter()
    metrics: dict[str, Any] | None = None
    try:
        result = run_pipeline(
            model_path=model_path,
            spec=PipelineSpec.model_validate(spec),
            datasets=datasets,
            workdir=workdir,
        )
    except OptimizerError as exc:
        row.error = f"{type(exc).__name__}: {exc.message}"
    except Exception as exc:  # a bench run reports every failure and goes on
        row.error = f"{type(exc).__name__}: {exc}"
        if args.verbose:
            traceback.print_exc()
    else:
        metrics = result.metrics
        optimized = metrics["optimized"]
        row.accuracy = optimized["accuracy"]
        row.parameters = inspect_model(result.model_path).parameter_count
        row.size_bytes = optimized["size_bytes"]
        row.p50_ms_b8 = _p50(optimized)
        row.speedup_b8 = _speedup(metrics)
        row.details = result.passes
        row.extra = _extra(result.passes)
    row.seconds = time.perf_counter() - began
    return row, metrics


def _speedup(metrics: dict[str, Any]) -> float:
    speedups = metrics["comparison"]["speedup_p50"]
    return float(speedups.get(8, speedups.get("8")))


def _extra(passes: list[dict[str, Any]]) -> str:
    """The pass detail a reader needs next to the row: sparsity and compressed size for
    magnitude pruning, the kept epoch for training."""
    details = passes[-1]["details"] if passes else {}
    parts: list[str] = []
    if isinstance(details.get("sparsity"), float):
        parts.append(f"sparsity {details['sparsity']:.2f}")
    sizes = details.get("size_bytes")
    if isinstance(sizes, dict) and "output_compressed" in sizes:
        before, after = sizes["input_compressed"] / 1e6, sizes["output_compressed"] / 1e6
        parts.append(f"zlib {before:.2f} -> {after:.2f} MB")
    training = details.get("training") or details.get("finetune") or {}
    if isinstance(training, dict) and "best_epoch" in training:
        parts.append(f"kept epoch {training['best_epoch']}/{training.get('epochs_run')}")
    return ", ".join(parts)


def print_table(rows: list[Row]) -> None:
    print("| recipe | test accuracy | parameters | size | p50 b8 | speedup b8 | notes |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        if row.error:
            print(f"| {row.recipe} | ERROR {row.error[:150]} | | | | | |")
            continue
        print(
            f"| {row.recipe} | {_pct(row.accuracy)} | {row.parameters:,} | "
            f"{(row.size_bytes or 0) / 1e6:.2f} MB | {row.p50_ms_b8:.2f} ms | "
            f"{_x(row.speedup_b8)} | {row.extra} |"
        )


def goal_lines(rows: dict[str, Row]) -> list[str]:
    lines: list[str] = []
    original = rows.get("original")
    structured = rows.get("structured_50_finetune")
    if original and structured and structured.accuracy is not None:
        drop = (original.accuracy or 0.0) - structured.accuracy
        speed = structured.speedup_b8 or 0.0
        met = speed >= GOAL_STRUCTURED_SPEEDUP and drop <= GOAL_STRUCTURED_DROP + 1e-9
        lines.append(
            f"Goal, structured 50% + fine-tuning: speedup at batch 8 {speed:.2f} (goal >= "
            f"{GOAL_STRUCTURED_SPEEDUP}), accuracy drop {drop * 100:+.1f} points (goal <= 1.0) "
            f"-> {'MET' if met else 'NOT MET'}"
        )
    student = rows.get("distilled_half_width")
    alone = rows.get("student_without_teacher")
    if original and student and student.accuracy is not None and original.accuracy:
        keeps = student.accuracy / original.accuracy
        beats = (
            alone is not None and alone.accuracy is not None and student.accuracy > (alone.accuracy)
        )
        met = keeps >= GOAL_STUDENT_KEEPS and beats
        lines.append(
            f"Goal, distilled half-width student: keeps {keeps * 100:.1f}% of the teacher's "
            f"accuracy (goal >= {GOAL_STUDENT_KEEPS * 100:.0f}%), "
            f"{_pct(student.accuracy)} vs {_pct(alone.accuracy if alone else None)} without "
            f"the teacher (goal: higher) -> {'MET' if met else 'NOT MET'}"
        )
    return lines


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.2f}%"


def _x(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--teacher-epochs", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=8, help="fine-tuning / distillation")
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--temperature", type=float, default=4.0)
    parser.add_argument("--alpha", type=float, default=0.7)
    parser.add_argument("--iterations", type=int, default=50, help="timed runs at batch 8")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads; 0: cores")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--recipes", default="all", help="comma-separated, or 'all'")
    parser.add_argument("--json", type=Path, help="write every row's numbers here")
    parser.add_argument("--verbose", action="store_true", help="print tracebacks of failures")
    args = parser.parse_args()

    available = recipes(args)
    names = (
        list(available)
        if args.recipes == "all"
        else [n.strip() for n in args.recipes.split(",") if n.strip()]
    )
    unknown = [n for n in names if n not in available]
    if unknown:
        parser.error(f"unknown recipe(s) {unknown}; recipes: {', '.join(available)}")

    preload()
    gc.freeze()
    rows: dict[str, Row] = {}
    with tempfile.TemporaryDirectory(prefix="modelpress-prune-bench-") as tmp:
        tmp_path = Path(tmp)
        x_train, x_test, y_train, y_test = load_digits_32(args.seed)
        np.savez(tmp_path / "train.npz", **{INPUT: x_train, "labels": y_train})
        np.savez(tmp_path / "test.npz", **{INPUT: x_test, "labels": y_test})
        datasets = {TRAIN: tmp_path / "train.npz", TEST: tmp_path / "test.npz"}
        print(
            f"# digits: {len(x_train)} train / {len(x_test)} test images, 1x{SIDE}x{SIDE}",
            flush=True,
        )
        began = time.perf_counter()
        teacher = train_teacher(
            x_train, y_train, epochs=args.teacher_epochs, seed=args.seed, path=tmp_path / "cnn.onnx"
        )
        info = inspect_model(teacher)
        print(
            f"# teacher: {info.parameter_count:,} parameters, trained in "
            f"{time.perf_counter() - began:.0f} s",
            flush=True,
        )
        original: Row | None = None
        for name in names:
            description, passes = available[name]
            row, metrics = run_recipe(
                name,
                description,
                passes,
                model_path=teacher,
                datasets=datasets,
                workdir=tmp_path / name,
                args=args,
            )
            if original is None and metrics is not None:
                # The baseline of every job is the same teacher, measured in each run; the
                # first run's numbers stand for it in the table.
                baseline = metrics["baseline"]
                original = Row(
                    recipe="original",
                    description="the trained CNN",
                    accuracy=baseline["accuracy"],
                    parameters=info.parameter_count,
                    size_bytes=baseline["size_bytes"],
                    p50_ms_b8=_p50(baseline),
                    speedup_b8=1.0,
                )
                rows["original"] = original
            rows[name] = row
            print(
                f"#   {name}: accuracy {_pct(row.accuracy)}, speedup b8 {_x(row.speedup_b8)}"
                f"{', ERROR ' + row.error if row.error else ''} ({row.seconds:.0f} s)",
                flush=True,
            )
            if args.json:
                args.json.write_text(
                    json.dumps([r.__dict__ for r in rows.values()], indent=2, default=str)
                )

    print()
    print(
        f"test accuracy on {len(y_test)} held-out digits; latency p50 over {args.iterations} "
        f"runs at batch 8 (threads {args.threads or 'default'}); speedup = original p50 / "
        "recipe p50, measured in the same job"
    )
    print_table(list(rows.values()))
    print()
    for line in goal_lines(rows):
        print(line)


def _p50(measured: dict[str, Any]) -> float:
    latency = measured["latency_ms"]
    return float((latency.get(8) or latency.get("8"))["p50"])


if __name__ == "__main__":
    main()
