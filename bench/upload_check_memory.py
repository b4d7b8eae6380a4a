"""Memory of the API-side upload checks on crafted uploads: each file is checked in a fresh
process, and the growth of its peak resident memory (VmHWM, reset after the imports) over
its resident memory before the check is printed, next to the file's size and the outcome.
The budget the checks keep to (docs/security.md, "Bounded memory") is CHECK_BUDGET;
tests/optimizers/formats/test_upload_memory.py asserts it on the same files.

    PYTHONPATH=$PWD .venv/bin/python bench/upload_check_memory.py     # from the repository root

Needs torch (to build the TorchScript and .pt2 files) and what `optimizers` imports.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

ROOT = Path(__file__).resolve().parents[1]

#: What the API-side check of one upload may allocate beyond what the process held before,
#: whatever the upload's size (docs/security.md, "Bounded memory").
CHECK_BUDGET = 256 << 20

_CHILD = """
import json, sys
from pathlib import Path
from optimizers.errors import OptimizerError
from optimizers.formats.upload import inspect_upload

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])

path, tmp, fields = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3])
# Start the peak (VmHWM) afresh at the current resident size, after the imports.
with open("/proc/self/clear_refs", "w") as handle:
    handle.write("5")
before = status("VmRSS")
try:
    inspect_upload(path, max_total_bytes=1 << 34, fields=fields, tmp_dir=tmp)
    outcome = "accepted"
except OptimizerError as exc:
    outcome = exc.message
print(json.dumps({"growth_kib": status("VmHWM") - before, "outcome": outcome}))
"""


def check_in_child(path: Path, tmp_path: Path, **fields: str) -> tuple[int, str]:
    """(bytes the check added to the process's peak memory, 'accepted' or the refusal)."""
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path), str(tmp_path / "scratch"), json.dumps(fields)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-3000:])
    report = json.loads(result.stdout.strip().splitlines()[-1])
    return report["growth_kib"] * 1024, report["outcome"]


def big_onnx(path: Path, *, megabytes: int) -> Path:
    """x @ W with W of `megabytes` MiB stored inline as raw_data, as onnx.save writes it."""
    columns = 256
    rows = megabytes * (1 << 20) // (4 * columns)
    weight = helper.make_tensor(
        "W",
        TensorProto.FLOAT,
        [rows, columns],
        np.ones((rows, columns), np.float32).tobytes(),
        raw=True,
    )
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", rows])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", columns])],
        initializer=[weight],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def torchscript_with(path: Path, member: str, make: Callable[[bytes], bytes]) -> Path:
    """A real TorchScript archive with one member replaced by `make(its content)`, stored
    uncompressed (so the zip's ratio check lets it through)."""
    import torch

    from tests.models.torch_programs import tiny_module

    source = path.with_suffix(".orig.pt")
    torch.jit.script(tiny_module()).save(str(source))
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(path, "w") as new:
        # The root module's code file name gets a mangled suffix when scripted twice.
        name = next(n for n in old.namelist() if member in n)
        for info in old.infolist():
            if info.filename != name:
                new.writestr(info, old.read(info))
        new.writestr(name, make(old.read(name)), compress_type=zipfile.ZIP_STORED)
    return path


def many_strings_pickle(count: int) -> bytes:
    # Protocol 4: SHORT_BINUNICODE 'ab' pushed `count` times (each a new str object when
    # listed), then POP_MARK and STOP.
    return b"\x80\x04(" + b"\x8c\x02ab" * count + b"1N."


def huge_string_pickle(size: int) -> bytes:
    return b"\x80\x04\x8d" + size.to_bytes(8, "little") + b"a" * size + b"."


def bloated_pt2(path: Path, *, objects: int) -> Path:
    """A real .pt2 program whose models/model.json is `objects` empty JSON objects."""
    from tests.models.torch_programs import rewrite_zip, save_pt2

    original = save_pt2(path.with_suffix(".orig.pt2"))
    with zipfile.ZipFile(original) as archive:
        name = next(n for n in archive.namelist() if n.endswith("models/model.json"))
    bloated = b'{"filler": [' + b"{}," * objects + b'{}], "graph_module": {}}'
    return rewrite_zip(original, path, {name: bloated})


def main() -> None:
    sys.path.insert(0, str(ROOT))
    shapes = '{"x": ["batch", 8]}'
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        cases: list[tuple[str, Path, dict[str, str]]] = [
            ("ONNX, 384 MiB of weights", big_onnx(folder / "big.onnx", megabytes=384), {}),
            (
                "pickle of 8M strings",
                torchscript_with(
                    folder / "strings.pt", "constants.pkl", lambda _: many_strings_pickle(8_000_000)
                ),
                {"input_shapes": shapes},
            ),
            (
                "pickle of one 200 MiB string",
                torchscript_with(
                    folder / "string.pt", "constants.pkl", lambda _: huge_string_pickle(200 << 20)
                ),
                {"input_shapes": shapes},
            ),
            (
                "code of 1M one-name lines",
                torchscript_with(
                    folder / "code.pt",
                    "code/__torch__/tests/models/torch_programs",
                    lambda source: source + b"a\n" * (1 << 20),
                ),
                {"input_shapes": shapes},
            ),
            ("pt2 JSON of 5M objects", bloated_pt2(folder / "json.pt2", objects=5 << 20), {}),
        ]
        print(f"budget {CHECK_BUDGET >> 20} MiB")
        print(f"{'upload':30s} {'size MiB':>9s} {'growth MiB':>11s} {'seconds':>8s}  outcome")
        for label, path, fields in cases:
            start = time.perf_counter()
            growth, outcome = check_in_child(path, folder, **fields)
            elapsed = time.perf_counter() - start
            size = path.stat().st_size / 2**20
            print(
                f"{label:30s} {size:9.1f} {growth / 2**20:11.1f} {elapsed:8.1f}  {outcome[:60]}",
                flush=True,
            )


if __name__ == "__main__":
    main()
