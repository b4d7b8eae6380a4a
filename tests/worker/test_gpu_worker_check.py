"""bench/gpu_worker_check.py on a machine without a GPU: it drives its `cuda` jobs through the
real worker code to the end and says plainly that nothing ran on a GPU, so that the run on a
lent GPU machine is not the first time the script itself runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# The script imports torch and starts the job host (torch again): a minute on a busy machine.
pytestmark = [
    pytest.mark.timeout(600),
    pytest.mark.skipif(
        Path("/dev/nvidiactl").exists(), reason="this machine has an NVIDIA GPU to run it on"
    ),
]


def test_without_a_gpu_it_runs_to_the_end_and_says_nothing_ran_on_a_gpu() -> None:
    env = {name: value for name, value in os.environ.items() if not name.startswith("MODELPRESS_")}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(
        [sys.executable, "bench/gpu_worker_check.py", "--quick", "--time-limit", "400"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=560,
    )
    output = done.stdout
    assert done.returncode == 2, output + done.stderr[-4000:]
    assert "no CUDA device: nothing ran on a GPU" in output
    # The worker's own GPU self-check ran and refused the gpu queue, saying why.
    assert "verdict" in output and "has no CUDAExecutionProvider" in output
    assert "refuses it" in output
    # Each cuda job went through the worker and failed as a user sees it: status and reason.
    for name in ("fp16", "int8", "2:4"):
        assert f"[{name} / device cuda] job_" in output
    assert output.count("error: unsupported: benchmark.device is 'cuda' but this worker") == 3
    summary = output.split("=== Summary ===", 1)[1]
    assert "ran on the GPU:\n  - nothing" in summary
    assert "FAILED" not in summary
