"""What a kept calibration saves: each static recipe of the auto search's kind is run twice on
one bench model with one calibration folder: the first run calibrates (and keeps the
ranges), the second reads them. Prints both pass times, what the second saved, and whether
the two quantized models are the same bytes.

    .venv/bin/python bench/calibration_reuse.py [--model transformer] [--samples 128]
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.models import MODELS, export_model, make_dataset  # noqa: E402
from optimizers.config import parse_pass  # noqa: E402
from optimizers.registry import run_pass  # noqa: E402
from optimizers.results import PassContext, PassResult  # noqa: E402

DATASET = "calibration"


def recipes(samples: int) -> dict[str, dict[str, Any]]:
    calibration = {"dataset_id": DATASET, "samples": samples}
    return {
        "static per-tensor minmax": {"method": "static", "calibration": calibration},
        "static per-channel minmax": {
            "method": "static",
            "per_channel": True,
            "calibration": calibration,
        },
        "static per-tensor entropy": {
            "method": "static",
            "calibration": {**calibration, "method": "entropy"},
        },
        "static transformer preset": {
            "method": "static",
            "preset": "transformer",
            "calibration": calibration,
        },
    }


def timed(model: Path, fields: dict[str, Any], ctx: PassContext) -> tuple[PassResult, float]:
    began = time.perf_counter()
    result = run_pass(model, parse_pass({"kind": "quantize", **fields}), ctx)
    return result, time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", choices=sorted(MODELS), default="transformer")
    parser.add_argument("--samples", type=int, default=128)
    args = parser.parse_args()
    gc.freeze()
    spec = MODELS[args.model]
    with tempfile.TemporaryDirectory(prefix="modelpress-calibration-reuse-") as tmp:
        folder = Path(tmp)
        model = export_model(spec, folder / f"{spec.name}.onnx")
        data = make_dataset(spec, model, folder / "calib.npz", samples=args.samples, seed=1)
        print(f"# {spec.name}: {spec.description}; {args.samples} calibration samples")
        print(f"{'recipe':<28} {'calibrated s':>12} {'reused s':>9} {'saved':>6}  same bytes")
        for index, (name, fields) in enumerate(recipes(args.samples).items()):
            cache = folder / f"cache{index}"
            runs = []
            for attempt in ("first", "second"):
                ctx = PassContext(
                    workdir=folder / f"{index}-{attempt}",
                    datasets={DATASET: data},
                    calibration_cache=cache,
                )
                runs.append(timed(model, fields, ctx))
            (first, cold), (second, warm) = runs
            assert not first.details["calibration_reused"] and second.details["calibration_reused"]
            same = first.model_path.read_bytes() == second.model_path.read_bytes()
            print(f"{name:<28} {cold:>12.2f} {warm:>9.2f} {1 - warm / cold:>6.0%}  {same}")


if __name__ == "__main__":
    main()
