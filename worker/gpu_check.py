"""Which queues a starting worker takes: the `gpu` queue only after its device proved itself
(worker.gpu_probe, in a process of its own); the other queues whatever the probe says."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

GPU_QUEUE = "gpu"
CPU_DEVICE: dict[str, Any] = {"kind": "cpu"}


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    device: dict[str, Any] = field(default_factory=dict)
    reason: str = ""


Probe = Callable[[float], ProbeResult]


def run_probe(timeout_s: float) -> ProbeResult:
    """Runs `python -m worker.gpu_probe` and reads its answer."""
    try:
        done = subprocess.run(
            [sys.executable, "-m", "worker.gpu_probe"],
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
    except subprocess.TimeoutExpired:
        return ProbeResult(ok=False, reason=f"the GPU check did not finish within {timeout_s:g} s")
    lines = done.stdout.strip().splitlines()
    try:
        answer = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        answer = None
    if not isinstance(answer, dict):
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return ProbeResult(
            ok=False, reason=f"the GPU check ended with exit code {done.returncode}: {tail[0]}"
        )
    if answer.get("ok"):
        return ProbeResult(ok=True, device=dict(answer.get("device") or {}))
    return ProbeResult(ok=False, reason=str(answer.get("reason") or "unknown"))


@dataclass(frozen=True)
class QueueChoice:
    #: The queues the worker consumes.
    queues: list[str]
    #: Queues it was started for and refuses, with the reason.
    refused: dict[str, str]
    #: What its jobs run on: the probed GPU, else the CPU.
    device: dict[str, Any]


def choose_queues(
    requested: Collection[str], *, probe: Probe = run_probe, timeout_s: float = 180.0
) -> QueueChoice:
    """The queues to consume of those requested. The GPU is probed only for the `gpu` queue."""
    queues = sorted(requested)
    if GPU_QUEUE not in queues:
        return QueueChoice(queues=queues, refused={}, device=dict(CPU_DEVICE))
    result = probe(timeout_s)
    if result.ok:
        return QueueChoice(queues=queues, refused={}, device=dict(result.device))
    kept = [queue for queue in queues if queue != GPU_QUEUE]
    return QueueChoice(queues=kept, refused={GPU_QUEUE: result.reason}, device=dict(CPU_DEVICE))
