"""Why workers on one host get disjoint cores: two benchmarks timed at once, first on the same
core, then each on a core of its own, against one benchmark alone. Each process pins itself
the way a worker does (worker.affinity, MODELPRESS_CPUS) and sizes its onnxruntime session
from its affinity (optimizers.measure.runtime.default_threads), as a job does.

    python bench/cores.py [--iterations 400] [--hidden 1024]

Prints the p50 and p90 latency (ms) of each process in each case. Needs at least 2 cores.
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _mlp(path: Path, *, hidden: int) -> Path:
    rng = np.random.default_rng(0)
    sizes = [784, hidden, hidden, 10]
    nodes, inits, current = [], [], "x"
    for index, (rows, cols) in enumerate(itertools.pairwise(sizes)):
        weight = (rng.standard_normal((rows, cols)) / np.sqrt(rows)).astype(np.float32)
        inits.append(numpy_helper.from_array(weight, f"w{index}"))
        out = f"h{index}"
        nodes.append(helper.make_node("MatMul", [current, f"w{index}"], [out]))
        if index < len(sizes) - 2:
            nodes.append(helper.make_node("Relu", [out], [f"r{index}"]))
            out = f"r{index}"
        current = out
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 784])],
        [helper.make_tensor_value_info(current, TensorProto.FLOAT, ["batch", 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, path)
    return path


def _time(cores: tuple[int, ...], model: str, iterations: int, start: float, out: Any) -> None:
    from optimizers.measure.runtime import CPU, create_session, default_threads
    from worker.affinity import pin_to

    pin_to(cores)
    threads = default_threads()
    session = create_session(Path(model), provider=CPU, threads=threads)
    feeds = {"x": np.random.default_rng(1).standard_normal((8, 784), dtype=np.float32)}
    for _ in range(20):
        session.run(None, feeds)
    while time.time() < start:  # both processes start timing at the same moment
        time.sleep(0.001)
    times = []
    for _ in range(iterations):
        began = time.perf_counter()
        session.run(None, feeds)
        times.append((time.perf_counter() - began) * 1000)
    out.append((cores, threads, statistics.median(times), np.percentile(times, 90)))


def _case(name: str, placements: list[tuple[int, ...]], model: str, iterations: int) -> None:
    with multiprocessing.Manager() as manager:
        results = manager.list()
        start = time.time() + 3.0
        procs = [
            multiprocessing.Process(target=_time, args=(cores, model, iterations, start, results))
            for cores in placements
        ]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join()
        for cores, threads, p50, p90 in sorted(results):
            print(
                f"{name:<28} cores {','.join(map(str, cores)):<5} threads {threads}  "
                f"p50 {p50:7.3f} ms  p90 {p90:7.3f} ms"
            )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--iterations", type=int, default=400)
    parser.add_argument("--hidden", type=int, default=1024)
    args = parser.parse_args()
    if len(os.sched_getaffinity(0)) < 2:
        raise SystemExit("needs at least 2 cores")
    first, second = sorted(os.sched_getaffinity(0))[:2]
    with tempfile.TemporaryDirectory() as folder:
        model = str(_mlp(Path(folder) / "mlp.onnx", hidden=args.hidden))
        _case("alone", [(first,)], model, args.iterations)
        _case("two workers, same core", [(first,), (first,)], model, args.iterations)
        _case("two workers, own cores", [(first,), (second,)], model, args.iterations)


if __name__ == "__main__":
    main()
