"""The upload checks run in bounded memory: each crafted file below is checked in a fresh
process whose peak resident memory (VmHWM, reset after the imports) is compared with its
resident memory before the check, and the growth must stay under CHECK_BUDGET whatever the
file's size. Also: describing an ONNX
model from its structure copy gives exactly what loading it whole gives."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from optimizers.formats import inspect_upload
from optimizers.inspect import inspect_model
from tests.factories import make_cnn, make_mlp
from tests.optimizers import zoo

#: What the API-side check of one upload may allocate beyond what the process held before,
#: whatever the upload's size (docs/security.md, "Upload checks").
CHECK_BUDGET = 256 << 20
LIMIT = 4 << 30

_CHILD = """
import json, sys
from pathlib import Path
from optimizers.errors import OptimizerError
from optimizers.formats import inspect_upload

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
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    return report["growth_kib"] * 1024, report["outcome"]


def _big_onnx(path: Path, *, megabytes: int) -> Path:
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


def test_large_onnx_model_is_described_without_loading_its_weights(tmp_path: Path) -> None:
    path = _big_onnx(tmp_path / "big.onnx", megabytes=384)
    growth, outcome = check_in_child(path, tmp_path)
    assert outcome == "accepted"
    assert growth < CHECK_BUDGET // 4, f"the check grew the process by {growth >> 20} MiB"


def _torchscript_with(path: Path, member: str, make: Callable[[bytes], bytes]) -> Path:
    """A real TorchScript archive with one member replaced by `make(its content)`, stored
    uncompressed (so the zip's ratio check lets it through)."""
    import torch

    from tests.torch_models import tiny_module

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


def _many_strings_pickle(count: int) -> bytes:
    # Protocol 4: SHORT_BINUNICODE 'ab' pushed `count` times (each a new str object when
    # listed), then POP_MARK and STOP.
    return b"\x80\x04(" + b"\x8c\x02ab" * count + b"1N."


def _huge_string_pickle(size: int) -> bytes:
    return b"\x80\x04\x8d" + size.to_bytes(8, "little") + b"a" * size + b"."


@pytest.mark.parametrize(
    ("member", "make", "refusal"),
    [
        pytest.param(
            "constants.pkl",
            lambda _: _many_strings_pickle(8_000_000),
            None,
            id="pickle-of-strings",
        ),
        pytest.param(
            "constants.pkl",
            lambda _: _huge_string_pickle(200 << 20),
            "pickled value larger than",
            id="pickle-huge-string",
        ),
        pytest.param(
            # The root module's code, which describing the archive parses.
            "code/__torch__/tests/torch_models",
            lambda source: source + b"a\n" * (1 << 20),
            "tokens",
            id="code-of-a-million-names",
        ),
    ],
)
def test_hostile_torchscript_members_are_checked_within_the_budget(
    tmp_path: Path, member: str, make: Callable[[bytes], bytes], refusal: str | None
) -> None:
    path = _torchscript_with(tmp_path / "evil.pt", member, make)
    growth, outcome = check_in_child(path, tmp_path, input_shapes='{"x": ["batch", 8]}')
    if refusal is None:
        assert outcome == "accepted"
    else:
        assert refusal in outcome
    assert growth < CHECK_BUDGET, f"the check grew the process by {growth >> 20} MiB"


def test_pt2_program_of_millions_of_objects_is_refused_within_the_budget(tmp_path: Path) -> None:
    from tests.torch_models import rewrite_zip, save_pt2

    original = save_pt2(tmp_path / "tiny.pt2")
    with zipfile.ZipFile(original) as archive:
        name = next(n for n in archive.namelist() if n.endswith("models/model.json"))
    bloated = b'{"filler": [' + b"{}," * (5 << 20) + b'{}], "graph_module": {}}'
    path = rewrite_zip(original, tmp_path / "bloated.pt2", {name: bloated})
    growth, outcome = check_in_child(path, tmp_path)
    assert "JSON objects and arrays" in outcome
    assert growth < CHECK_BUDGET, f"the check grew the process by {growth >> 20} MiB"


def test_zip_bomb_member_is_refused_before_it_is_expanded(tmp_path: Path) -> None:
    path = tmp_path / "bomb.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("model.onnx", make_mlp(tmp_path / "m.onnx").read_bytes())
        archive.writestr("model.onnx.data", b"\0" * (512 << 20))
    growth, outcome = check_in_child(path, tmp_path)
    assert "zip bomb" in outcome
    assert growth < CHECK_BUDGET // 4


def _onnx_builders() -> dict[str, Callable[[Path], Path]]:
    builders: dict[str, Callable[[Path], Path]] = {
        "factories.make_mlp": make_mlp,
        "factories.make_cnn": make_cnn,
    }
    for name in dir(zoo):
        if name.startswith("make_"):
            builders[f"zoo.{name}"] = getattr(zoo, name)
    return builders


@pytest.mark.parametrize("builder", sorted(_onnx_builders()))
def test_onnx_models_are_described_as_a_full_load_describes_them(
    builder: str, tmp_path: Path
) -> None:
    path = _onnx_builders()[builder](tmp_path / "m.onnx")
    described = inspect_upload(path, max_total_bytes=LIMIT, fields={}, tmp_dir=tmp_path / "t")
    assert described == inspect_model(path, check_domains=True)
    assert list((tmp_path / "t").iterdir()) == []


def test_bench_models_are_described_as_a_full_load_describes_them(tmp_path: Path) -> None:
    from bench.models import MODELS, export_model

    for name, spec in MODELS.items():
        path = export_model(spec, tmp_path / f"{name}.onnx")
        described = inspect_upload(path, max_total_bytes=LIMIT, fields={}, tmp_dir=tmp_path)
        assert described == inspect_model(path, check_domains=True), name
