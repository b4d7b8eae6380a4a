"""Describe the machine and libraries a result was measured with, so numbers from different
workers can be told apart."""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import logging
import os
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import psutil

from optimizers.measure.runtime import usable_cores

logger = logging.getLogger(__name__)

#: CPU flags that decide which inference kernels run (SIMD width, int8 dot products, AMX,
#: fp16/bf16 support); the other few hundred flags say nothing about model speed.
_RELEVANT_FLAG_PREFIXES = (
    "sse4",
    "avx",
    "fma",
    "f16c",
    "amx",
    "vnni",
    "bf16",
    "asimd",
    "neon",
    "sve",
    "i8mm",
    "fp16",
    "dotprod",
)


def describe_environment(provider: str, threads: int) -> dict[str, Any]:
    cpu_model, cpu_flags = _cpu_model_and_flags()
    cuda = provider == "CUDAExecutionProvider"
    return {
        "cpu_model": cpu_model,
        "cpu_flags": cpu_flags,
        "cores_logical": psutil.cpu_count(logical=True) or os.cpu_count(),
        "cores_physical": psutil.cpu_count(logical=False),
        "memory_total_bytes": int(psutil.virtual_memory().total),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {
            "onnxruntime": ort.__version__,
            "onnx": onnx.__version__,
            "numpy": np.__version__,
            "modelpress": _distribution_version("modelpress"),
        },
        "execution_provider": provider,
        "threads": threads,
        "torch_threads": _torch_threads(),
        #: The cores the job ran on (its worker's MODELPRESS_CPUS, or all it was given).
        "cores": usable_cores(),
        "device": "cuda" if cuda else "cpu",
        "gpu": _gpu_name() if cuda else None,
        "gpu_device": _gpu_device() if cuda else None,
    }


def _cpu_model_and_flags() -> tuple[str, list[str]]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine() or "unknown", []
    model = ""
    flags: list[str] = []
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        # x86 names the CPU in "model name" and lists "flags"; ARM uses "Features".
        if key in ("model name", "Model", "Hardware") and not model:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = value.split()
        if model and flags:
            break
    relevant = sorted({flag for flag in flags if flag.startswith(_RELEVANT_FLAG_PREFIXES)})
    return model or platform.processor() or platform.machine() or "unknown", relevant


def _distribution_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _gpu_name() -> str | None:
    # The NVIDIA driver names its GPUs here, which avoids importing torch (seconds, GBs).
    for info in sorted(Path("/proc/driver/nvidia/gpus").glob("*/information")):
        try:
            for line in info.read_text().splitlines():
                if line.startswith("Model:"):
                    return line.partition(":")[2].strip()
        except OSError:
            continue
    if importlib.util.find_spec("torch") is None:
        return None
    try:
        import torch

        if torch.cuda.is_available():
            return str(torch.cuda.get_device_name(0))
    except Exception:
        logger.warning("could not read the GPU name through torch", exc_info=True)
    return None


def _torch_threads() -> int | None:
    """torch's intra-op threads where the job loaded torch (training passes); this module
    never imports it."""
    torch = sys.modules.get("torch")
    return int(torch.get_num_threads()) if torch is not None else None


def _gpu_device() -> dict[str, Any] | None:
    """Memory and compute capability of the GPU that ran the job (CUDA device 0 of those
    visible to it), and the driver version, where torch and the driver say so."""
    described: dict[str, Any] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/driver/nvidia/version").read_text().splitlines():
            if "Kernel Module" in line:
                described["driver"] = line.split("Kernel Module")[1].split()[0]
                break
    if importlib.util.find_spec("torch") is not None:
        try:
            import torch

            if torch.cuda.is_available():
                props = torch.cuda.get_device_properties(0)
                described |= {
                    "name": props.name,
                    "memory_bytes": int(props.total_memory),
                    "compute_capability": f"{props.major}.{props.minor}",
                }
        except Exception:
            logger.warning("could not describe the GPU through torch", exc_info=True)
    return described or None
