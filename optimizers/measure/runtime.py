"""onnxruntime sessions created the same way for evaluation and benchmarking."""

from __future__ import annotations

import os
from pathlib import Path

import onnxruntime as ort

from optimizers.errors import InvalidModelError, UnsupportedError

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


def resolve_provider(device: str) -> str:
    """The execution provider for a benchmark device, or UnsupportedError if this machine
    lacks it."""
    if device == "cpu":
        return CPU
    if device == "cuda":
        if CUDA not in ort.get_available_providers():
            raise UnsupportedError(
                "benchmark.device is 'cuda' but this worker has no CUDA execution provider; "
                "send the job to a GPU worker or use device 'cpu'"
            )
        return CUDA
    raise UnsupportedError(f"unknown benchmark device '{device}'; use 'cpu' or 'cuda'")


def usable_cores() -> list[int]:
    """The cores this process may run on (its CPU affinity: a worker's MODELPRESS_CPUS, a
    container's CPU set), sorted."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not available on macOS
        return list(range(os.cpu_count() or 1))


def default_threads() -> int:
    """Physical cores among those this process may run on: hyper-threads rarely speed up
    inference, and a worker pinned to two cores must not start a thread per core of the host
    (its threads would queue on its two cores, and another worker's cores stay untouched)."""
    cores = usable_cores()
    physical = {_physical_core(core) for core in cores}
    if None in physical:  # no topology to read: every usable core counts
        return max(1, len(cores))
    return max(1, len(physical))


def _physical_core(core: int) -> tuple[str, str] | None:
    topology = Path(f"/sys/devices/system/cpu/cpu{core}/topology")
    try:
        return (
            (topology / "physical_package_id").read_text().strip(),
            (topology / "core_id").read_text().strip(),
        )
    except OSError:
        return None


#: Session config entries every session gets. Idle intra-op threads otherwise spin for a
#: while after each run. The benchmark times two sessions in turn, and one session's spinning
#: threads took the cores from the other's run (on 2 cores both models measured up to 1.6x
#: slower, the int8 one most).
SESSION_CONFIG_ENTRIES = {"session.intra_op.allow_spinning": "0"}


def session_options_record(threads: int) -> dict[str, object]:
    """The session options create_session sets, by their public onnxruntime names, so that a
    result says how to rebuild its sessions with plain onnxruntime."""
    return {
        "intra_op_num_threads": threads,
        "inter_op_num_threads": 1,
        "execution_mode": "ORT_SEQUENTIAL",
        "graph_optimization_level": "ORT_ENABLE_ALL",
        "config_entries": dict(SESSION_CONFIG_ENTRIES),
    }


def create_session(path: Path, *, provider: str, threads: int) -> ort.InferenceSession:
    """A session with full graph optimization, `threads` intra-op threads and sequential
    execution, so that two models measured with it are treated identically."""
    record = session_options_record(threads)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = getattr(ort.ExecutionMode, str(record["execution_mode"]))
    options.graph_optimization_level = getattr(
        ort.GraphOptimizationLevel, str(record["graph_optimization_level"])
    )
    for key, value in SESSION_CONFIG_ENTRIES.items():
        options.add_session_config_entry(key, value)
    # CPU stays in the list for the few ops a GPU provider does not implement.
    providers = [provider] if provider == CPU else [provider, CPU]
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:
        raise InvalidModelError(f"onnxruntime cannot load {path.name}: {exc}") from exc
    if session.get_providers()[0] != provider:
        raise UnsupportedError(
            f"onnxruntime could not start {provider} for {path.name} (it fell back to "
            f"{session.get_providers()[0]}); check the GPU driver and CUDA libraries"
        )
    return session
