"""Where the time goes: onnxruntime's profile of a float model and its quantized version,
kernel time per op type.

Wall-clock latency on a shared 2-core VM includes time the threads spend descheduled, which
hits every run differently. A node's kernel time includes preemption too, but its minimum
over many runs much less, so the sum over nodes of each node's minimum kernel time is closer
to the model's compute time. It leaves out scheduling and thread-pool overhead between nodes
(a lower bound of the latency, not the latency), and a machine that is busy all the time
still slows every run: compare numbers taken under the same load only.

    .venv/bin/python bench/kernel_profile.py [--model transformer] [--batch 8] [--runs 20]
        [--quantize '{"method": "dynamic", "per_channel": true}']
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.models import MODELS, export_model  # noqa: E402
from optimizers.config import parse_pass  # noqa: E402
from optimizers.registry import run_pass  # noqa: E402
from optimizers.results import PassContext  # noqa: E402

#: Profiled runs whose node times are ignored: first-run allocations and warm-up.
SKIPPED_RUNS = 2


def kernel_times(
    model_path: Path, feeds: dict[str, np.ndarray], *, runs: int, threads: int, prefix: Path
) -> dict[str, float]:
    """Op type -> sum over its nodes of each node's minimum kernel time (ms) over `runs`."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.enable_profiling = True
    options.profile_file_prefix = str(prefix)
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    for _ in range(runs + SKIPPED_RUNS):
        session.run(None, feeds)
    events = json.loads(Path(session.end_profiling()).read_text())
    durations: dict[str, list[int]] = collections.defaultdict(list)
    op_types: dict[str, str] = {}
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            node = event["name"].removesuffix("_kernel_time")
            durations[node].append(int(event["dur"]))
            op_types[node] = event["args"].get("op_name", "?")
    by_type: collections.Counter[str] = collections.Counter()
    for node, times in durations.items():
        by_type[op_types[node]] += min(times[SKIPPED_RUNS:] or times) / 1000.0
    return dict(by_type)


def print_profile(name: str, times: dict[str, float]) -> None:
    total = sum(times.values())
    print(f"{name}: {total:.1f} ms (sum of per-node minimum kernel times)")
    for op_type, ms in sorted(times.items(), key=lambda item: -item[1]):
        if ms >= 0.05 * total / 10:
            print(f"  {op_type:28s} {ms:8.2f} ms {100 * ms / total:5.1f}%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", choices=sorted(MODELS), default="transformer")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--quantize",
        default='{"method": "dynamic", "per_channel": true}',
        help="the quantize pass, as JSON (no calibration: dynamic, fp16, int4_weight_only)",
    )
    args = parser.parse_args()

    spec = MODELS[args.model]
    config = parse_pass({"kind": "quantize", **json.loads(args.quantize)})
    with tempfile.TemporaryDirectory(prefix="modelpress-profile-") as tmp:
        tmp_path = Path(tmp)
        float_model = export_model(spec, tmp_path / f"{spec.name}.onnx")
        quantized = run_pass(
            float_model, config, PassContext(workdir=tmp_path / "quantize", datasets={})
        ).model_path
        rng = np.random.default_rng(0)
        feeds = {
            spec.input_name: rng.standard_normal((args.batch, *spec.sample_shape)).astype(
                np.float32
            )
        }
        common = {"runs": args.runs, "threads": args.threads}
        base = kernel_times(float_model, feeds, prefix=tmp_path / "float", **common)
        optimized = kernel_times(quantized, feeds, prefix=tmp_path / "quantized", **common)
    print(
        f"{spec.name} ({spec.description}), batch {args.batch}, {args.threads} threads, "
        f"{args.runs} runs, quantize {json.dumps(config.model_dump(exclude_defaults=True))}"
    )
    print_profile("float32", base)
    print_profile("quantized", optimized)
    ratio = sum(base.values()) / sum(optimized.values())
    print(f"kernel-time speedup (float / quantized): {ratio:.2f}x")


if __name__ == "__main__":
    main()
