"""Pruning and distillation on real data: scikit-learn's bundled digits (1797 8x8 images,
upsampled to 32x32), a CNN of about 240 k parameters trained here, then each recipe run
through `run_pipeline` exactly as a worker runs a job. Prints accuracy on a held-out test
split, parameters, size and p50 latency at batch 8, and the goal lines.

    .venv/bin/python bench/prune_distill.py [--seeds 3] [--teacher-epochs 12] [--epochs 20]
        [--threads 1] [--iterations 200] [--recipes all] [--json out.json]

Goals: structured 50% with fine-tuning at least 2x faster at batch 8 with accuracy within
1 point of the original; the distilled half-width student keeps at least 97% of the
teacher's accuracy and beats the same student trained without the teacher.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
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
from optimizers.model_info import inspect_model  # noqa: E402
from optimizers.pipeline import preload, run_pipeline  # noqa: E402

TRAIN, TEST = "train", "test"
SCRATCH = "scratch-student"
#: Learning rate of every model trained from random weights: the teacher, the scratch student.
TEACHER_LR = 2e-3
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


def build_cnn(width: float = 1.0) -> Any:
    import torch

    c1, c2, c3 = (max(1, round(c * width)) for c in (32, 64, 128))

    def block(inputs: int, outputs: int) -> list[torch.nn.Module]:
        return [
            torch.nn.Conv2d(inputs, outputs, 3, padding=1, bias=False),
            torch.nn.BatchNorm2d(outputs),
            torch.nn.ReLU(),
        ]

    # Pooling early keeps training to minutes on a 2-core CPU (about 19 M multiply-adds per
    # image); the 128-channel layers hold most of the parameters.
    return torch.nn.Sequential(
        *block(1, c1),
        torch.nn.MaxPool2d(2),
        *block(c1, c2),
        torch.nn.MaxPool2d(2),
        *block(c2, c3),
        *block(c3, c3),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(c3, 10),
    )


def train_teacher(
    x_train: np.ndarray, y_train: np.ndarray, *, epochs: int, seed: int, path: Path
) -> Path:
    """Train the CNN with Adam and cross-entropy, export it to ONNX (batch axis dynamic)."""
    import torch

    torch.manual_seed(seed)
    model = build_cnn()
    optimizer = torch.optim.Adam(model.parameters(), lr=TEACHER_LR)
    inputs, labels = torch.from_numpy(x_train), torch.from_numpy(y_train)
    generator = torch.Generator().manual_seed(seed)
    steps = epochs * math.ceil(len(inputs) / 64)
    # The same cosine decay the service trains with (lr_schedule: cosine).
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
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
            schedule.step()
            total += loss.item() * len(batch)
        print(f"#   teacher epoch {epoch + 1}/{epochs}: loss {total / len(order):.4f}", flush=True)
    return export(model, path)


def export(model: Any, path: Path) -> Path:
    """The model in eval mode as ONNX, batch axis dynamic."""
    import torch

    model.eval()
    with torch.no_grad():
        torch.onnx.export(
            model,
            (torch.zeros(2, 1, SIDE, SIDE),),
            str(path),
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    return path


def scratch_student(seed: int, path: Path) -> Path:
    """The half-width CNN with fresh random weights: the derived student's architecture,
    with nothing taken from the teacher."""
    import torch

    torch.manual_seed(seed + 1)
    return export(build_cnn(width=0.5), path)


def recipes(args: argparse.Namespace) -> dict[str, tuple[str, list[dict[str, Any]]]]:
    training = {
        "dataset_id": TRAIN,
        "epochs": args.epochs,
        "learning_rate": args.learning_rate,
        "batch_size": 64,
        "validation_split": 0.1,
        "patience": args.patience or None,
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
        "student_labels_only": (
            "the same derived student (the teacher's pruned weights), cross-entropy only (alpha 0)",
            [{"kind": "distill", "student": student, **training, "alpha": 0.0}],
        ),
        "student_from_scratch": (
            "the same half-width architecture from random weights, cross-entropy only at the "
            "teacher's learning rate: trained without the teacher",
            [
                {
                    "kind": "distill",
                    "student": {"model_id": SCRATCH},
                    **training,
                    "learning_rate": TEACHER_LR,
                    "alpha": 0.0,
                }
            ],
        ),
    }


def run_recipe(
    name: str,
    description: str,
    passes: list[dict[str, Any]],
    *,
    model_path: Path,
    datasets: dict[str, Path],
    models: dict[str, Path],
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
            models=models,
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


def goal_lines(runs: list[dict[str, Row]]) -> list[str]:
    """The goal lines, judged on the mean over the seeds' runs (every run must have the row)."""
    lines: list[str] = []

    def mean(recipe: str, field: str) -> float | None:
        values = _values(runs, recipe, field)
        return None if values is None else float(np.mean(values))

    original = mean("original", "accuracy")
    structured = mean("structured_50_finetune", "accuracy")
    speeds = _values(runs, "structured_50_finetune", "speedup_b8")
    if original is not None and structured is not None and speeds:
        drop = original - structured
        slowest = min(speeds)
        met = slowest >= GOAL_STRUCTURED_SPEEDUP and drop <= GOAL_STRUCTURED_DROP + 1e-9
        lines.append(
            f"Goal, structured 50% + fine-tuning: lowest speedup at batch 8 {slowest:.2f} (goal "
            f">= {GOAL_STRUCTURED_SPEEDUP}), mean accuracy drop {drop * 100:+.2f} points (goal "
            f"<= 1.0) -> {'MET' if met else 'NOT MET'}"
        )
    student = mean("distilled_half_width", "accuracy")
    scratch = mean("student_from_scratch", "accuracy")
    labels_only = mean("student_labels_only", "accuracy")
    if original and student is not None:
        keeps = student / original
        beats = scratch is not None and student > scratch
        met = keeps >= GOAL_STUDENT_KEEPS and beats
        lines.append(
            f"Goal, distilled half-width student: keeps {keeps * 100:.1f}% of the teacher's "
            f"accuracy (goal >= {GOAL_STUDENT_KEEPS * 100:.0f}%), mean {_pct(student)} vs "
            f"{_pct(scratch)} for the same student trained without the teacher (goal: higher) "
            f"-> {'MET' if met else 'NOT MET'}"
        )
        if labels_only is not None:
            verdict = (
                "higher"
                if student > labels_only
                else "not higher"
                if student < labels_only
                else "the same"
            )
            lines.append(
                f"  (the distillation loss alone, same start: {_pct(student)} vs "
                f"{_pct(labels_only)} with labels only from the teacher's pruned weights: "
                f"{verdict})"
            )
    return lines


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.2f}%"


def _x(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--teacher-epochs", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=20, help="fine-tuning / distillation")
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument(
        "--patience", type=int, default=0, help="early stopping patience; 0: every epoch"
    )
    parser.add_argument("--temperature", type=float, default=4.0)
    parser.add_argument("--alpha", type=float, default=0.7)
    parser.add_argument("--iterations", type=int, default=200, help="timed runs at batch 8")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads; 0: cores")
    parser.add_argument(
        "--seeds", type=int, default=3, help="runs, each with its own split, teacher and order"
    )
    parser.add_argument("--recipes", default="all", help="comma-separated, or 'all'")
    parser.add_argument("--json", type=Path, help="write every row's numbers here")
    parser.add_argument("--verbose", action="store_true", help="print tracebacks of failures")
    args = parser.parse_args()

    available = recipes(argparse.Namespace(**{**vars(args), "seed": 0}))
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
    runs: list[dict[str, Row]] = []
    for seed in range(args.seeds):
        runs.append(run_seed(seed, names, args))
        if args.json:
            args.json.write_text(
                json.dumps(
                    [{name: row.__dict__ for name, row in run.items()} for run in runs],
                    indent=2,
                    default=str,
                )
            )

    print()
    print(
        f"test accuracy on the held-out digits; latency p50 over {args.iterations} runs at "
        f"batch 8 (threads {args.threads or 'default'}); speedup = original p50 / recipe p50, "
        "measured in the same job"
    )
    for seed, run in enumerate(runs):
        print(f"\nseed {seed}:")
        print_table(list(run.values()))
    if len(runs) > 1:
        print(f"\nmean over {len(runs)} seeds:")
        print_means(runs)
    print()
    for line in goal_lines(runs):
        print(line)


def run_seed(seed: int, names: list[str], args: argparse.Namespace) -> dict[str, Row]:
    """Every recipe on one split of the data, with a teacher trained on it."""
    import torch

    torch.manual_seed(seed)
    rows: dict[str, Row] = {}
    with tempfile.TemporaryDirectory(prefix="modelpress-prune-bench-") as tmp:
        tmp_path = Path(tmp)
        x_train, x_test, y_train, y_test = load_digits_32(seed)
        np.savez(tmp_path / "train.npz", **{INPUT: x_train, "labels": y_train})
        np.savez(tmp_path / "test.npz", **{INPUT: x_test, "labels": y_test})
        datasets = {TRAIN: tmp_path / "train.npz", TEST: tmp_path / "test.npz"}
        models = {SCRATCH: scratch_student(seed, tmp_path / "scratch.onnx")}
        print(
            f"# seed {seed}: {len(x_train)} train / {len(x_test)} test images, 1x{SIDE}x{SIDE}",
            flush=True,
        )
        began = time.perf_counter()
        teacher = train_teacher(
            x_train, y_train, epochs=args.teacher_epochs, seed=seed, path=tmp_path / "cnn.onnx"
        )
        info = inspect_model(teacher)
        print(
            f"# teacher: {info.parameter_count:,} parameters, trained in "
            f"{time.perf_counter() - began:.0f} s",
            flush=True,
        )
        seeded = argparse.Namespace(**{**vars(args), "seed": seed})
        for name in names:
            description, passes = recipes(seeded)[name]
            row, metrics = run_recipe(
                name,
                description,
                passes,
                model_path=teacher,
                datasets=datasets,
                models=models,
                workdir=tmp_path / name,
                args=args,
            )
            if "original" not in rows and metrics is not None:
                # The baseline of every job is the same teacher, measured in each run; the
                # first run's numbers stand for it in the table.
                baseline = metrics["baseline"]
                rows["original"] = Row(
                    recipe="original",
                    description="the trained CNN",
                    accuracy=baseline["accuracy"],
                    parameters=info.parameter_count,
                    size_bytes=baseline["size_bytes"],
                    p50_ms_b8=_p50(baseline),
                    speedup_b8=1.0,
                )
            rows[name] = row
            print(
                f"#   {name}: accuracy {_pct(row.accuracy)}, speedup b8 {_x(row.speedup_b8)}"
                f"{', ERROR ' + row.error if row.error else ''} ({row.seconds:.0f} s)",
                flush=True,
            )
    return rows


def print_means(runs: list[dict[str, Row]]) -> None:
    print("| recipe | mean test accuracy | lowest | highest | mean speedup b8 |")
    print("|---|---|---|---|---|")
    for name in runs[0]:
        accuracies = _values(runs, name, "accuracy")
        speedups = _values(runs, name, "speedup_b8")
        if accuracies is None or speedups is None:
            print(f"| {name} | n/a | | | |")
            continue
        print(
            f"| {name} | {_pct(float(np.mean(accuracies)))} | {_pct(min(accuracies))} | "
            f"{_pct(max(accuracies))} | {_x(float(np.mean(speedups)))} |"
        )


def _values(runs: list[dict[str, Row]], recipe: str, field: str) -> list[float] | None:
    """`field` of `recipe` in every seed's run, or None when a run lacks it."""
    values = [getattr(run[recipe], field) if recipe in run else None for run in runs]
    if any(value is None for value in values):
        return None
    return [float(value) for value in values]


def _p50(measured: dict[str, Any]) -> float:
    latency = measured["latency_ms"]
    return float((latency.get(8) or latency.get("8"))["p50"])


if __name__ == "__main__":
    main()
