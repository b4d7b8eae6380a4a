"""The GPU self-check a worker runs before it takes the `gpu` queue, in a process of its own
(`python -m worker.gpu_probe`): a CUDA context never lives in the worker process that forks
the pool, and a driver that hangs or crashes takes only this process with it.

It loads onnxruntime's CUDAExecutionProvider, runs a tiny model on the device and checks the
answer, then describes the device. It prints one JSON line: {"ok": true, "device": {...}} or
{"ok": false, "reason": "..."}. It imports nothing of the service.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from typing import Any

CUDA = "CUDAExecutionProvider"


def probe() -> dict[str, Any]:
    try:
        import onnxruntime as ort
    except Exception as exc:  # a broken install is a reason to refuse, not a crash
        return {"ok": False, "reason": f"onnxruntime does not load: {exc}"}
    available = ort.get_available_providers()
    if CUDA not in available:
        return {
            "ok": False,
            "reason": f"onnxruntime {ort.__version__} has no {CUDA} (it has "
            f"{', '.join(available)}); install the GPU build (onnxruntime-gpu) and the CUDA "
            "libraries",
        }
    try:
        _run_tiny_model(ort)
    except Exception as exc:
        return {"ok": False, "reason": f"{CUDA} could not run a model on the device: {exc}"}
    return {"ok": True, "device": {"kind": "cuda", "execution_provider": CUDA, **_describe()}}


def _run_tiny_model(ort: Any) -> None:
    import numpy as np
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "gpu_probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])],
        [helper.make_tensor("w", TensorProto.FLOAT, [3, 2], [1, 2, 3, 4, 5, 6])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    session = ort.InferenceSession(
        model.SerializeToString(),
        providers=[CUDA],
    )
    if session.get_providers()[0] != CUDA:
        raise RuntimeError(f"the session fell back to {session.get_providers()[0]}")
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    (y,) = session.run(None, {"x": x})
    expected = x @ np.arange(1, 7, dtype=np.float32).reshape(3, 2)
    if not np.allclose(y, expected):
        raise RuntimeError("the device returned a wrong product")


def _describe() -> dict[str, Any]:
    """Name, memory, driver and compute capability of CUDA device 0 (the first one visible
    to this worker), from torch where installed, else from nvidia-smi."""
    device: dict[str, Any] = {}
    try:
        import torch

        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            device |= {
                "name": props.name,
                "memory_bytes": int(props.total_memory),
                "compute_capability": f"{props.major}.{props.minor}",
                "cuda": torch.version.cuda,
            }
    except Exception:  # torch is optional for a GPU worker; nvidia-smi answers the rest
        pass
    smi = _nvidia_smi()
    for key, value in smi.items():
        device.setdefault(key, value)
    return device


def _nvidia_smi() -> dict[str, Any]:
    binary = shutil.which("nvidia-smi")
    if binary is None:
        return {}
    try:
        output = subprocess.run(
            [
                binary,
                "--query-gpu=name,memory.total,driver_version,compute_cap",
                "--format=csv,noheader,nounits",
                "--id=0",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    fields = [field.strip() for field in output.splitlines()[0].split(",")] if output else []
    if len(fields) < 4:
        return {}
    name, memory_mib, driver, capability = fields[:4]
    described: dict[str, Any] = {"name": name, "driver": driver, "compute_capability": capability}
    if memory_mib.isdigit():
        described["memory_bytes"] = int(memory_mib) * 1024 * 1024
    return described


def main() -> None:
    sys.stdout.write(json.dumps(probe()) + "\n")


if __name__ == "__main__":
    main()
