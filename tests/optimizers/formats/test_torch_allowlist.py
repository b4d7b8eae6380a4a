"""The operator allow-list for PyTorch uploads, in both directions: every program the tests
and benches build is accepted, saved the ways users save them (torch.jit.script,
torch.jit.trace, torch.export); each operator that touches files, memory shared with other
processes, Python or a custom library is refused with its name, before torch ever sees it."""

from __future__ import annotations

import inspect
import json
import math
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from bench.models import MODELS
from optimizers.formats.archive_safety import UnsafeArchiveError
from optimizers.formats.torch_operators import ATEN_OPERATORS, PRIM_OPERATORS, operator_allowed
from optimizers.formats.upload import inspect_upload
from tests.models.torch_programs import encoder_classifier, rewrite_zip, tiny_module

LIMIT = 1 << 30


class _Attention(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attention = torch.nn.MultiheadAttention(16, 2, batch_first=True)
        self.norm = torch.nn.LayerNorm(16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.attention(x, x, x)[0])


class _Recurrent(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = torch.nn.LSTM(16, 16, batch_first=True)
        self.gru = torch.nn.GRU(16, 8, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gru(self.lstm(x)[0])[0]


class _Functional(torch.nn.Module):
    """Loops over a ModuleList, math constants, no_grad, embeddings, group norm,
    interpolate, masks and branches: the Python that TorchScript users write."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList([torch.nn.Linear(8, 8) for _ in range(3)])
        self.embedding = torch.nn.Embedding(10, 8)
        self.conv = torch.nn.Conv2d(1, 2, 3, padding=1)
        self.norm = torch.nn.GroupNorm(1, 2)
        self.register_buffer("scale", torch.ones(8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = torch.nn.functional.gelu(block(x)) / math.sqrt(8.0) + math.pi
        x = torch.nn.functional.normalize(x, dim=-1) * self.scale
        with torch.no_grad():
            y = x.clone()
        embedded = self.embedding(torch.argmax(x, dim=-1))
        image = x.reshape(x.shape[0], 1, 2, 4)
        image = torch.nn.functional.interpolate(
            self.norm(self.conv(image)), scale_factor=2.0, mode="nearest"
        )
        if x.dim() > 1:
            x = x + embedded + y
        x = torch.where(x > 0, x, torch.zeros_like(x)).masked_fill(x < -1, float("-inf"))
        return torch.cat([x, image.flatten(1)], dim=1).softmax(-1)


class _ReadsAFile(torch.nn.Module):
    """Adds the first floats of a file on the worker to its input."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.from_file(self.path, shared=False, size=4)


class _WritesAFile(torch.nn.Module):
    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch.save(x, self.path)
        return x


#: name -> (build the module, an example input shape)
PURE_MODELS: dict[str, tuple[Callable[[], Any], tuple[int, ...]]] = {
    "tiny_mlp": (tiny_module, (2, 8)),
    "encoder_classifier": (encoder_classifier, (2, 5, 16)),
    "attention_layernorm": (_Attention, (2, 5, 16)),
    "lstm_gru": (_Recurrent, (2, 5, 16)),
    "functional_and_control_flow": (_Functional, (2, 8)),
    **{f"bench_{name}": (spec.build, (2, *spec.sample_shape)) for name, spec in MODELS.items()},
}


def _input_name(module: Any) -> str:
    return next(iter(inspect.signature(module.forward).parameters))


#: Modules whose Python control flow torch.jit.trace refuses to freeze (its sanity check
#: sees different graphs); they are uploaded scripted or exported.
_NOT_TRACEABLE = {"encoder_classifier", "attention_layernorm", "bench_transformer"}


def _inspect(path: Path, tmp_path: Path, **fields: str) -> Any:
    return inspect_upload(path, max_total_bytes=LIMIT, fields=fields, tmp_dir=tmp_path / "t")


def _save_torchscript(module: Any, path: Path, *, how: str, shape: tuple[int, ...]) -> Path:
    module.eval()
    if how == "script":
        compiled = torch.jit.script(module)
    else:
        compiled = torch.jit.trace(module, torch.randn(*shape))
    compiled.save(str(path))
    return path


@pytest.mark.parametrize("how", ["script", "trace"])
@pytest.mark.parametrize("name", sorted(PURE_MODELS))
def test_pure_torchscript_models_are_accepted(name: str, how: str, tmp_path: Path) -> None:
    if how == "trace" and name in _NOT_TRACEABLE:
        pytest.skip("torch.jit.trace cannot freeze this module's control flow")
    build, shape = PURE_MODELS[name]
    torch.manual_seed(0)
    module = build()
    input_name = _input_name(module)
    path = _save_torchscript(module, tmp_path / f"{name}.pt", how=how, shape=shape)
    shapes = json.dumps({input_name: ["batch", *shape[1:]]})
    info = _inspect(path, tmp_path, input_shapes=shapes)
    assert [t.name for t in info.inputs] == [input_name]


@pytest.mark.parametrize("name", sorted(PURE_MODELS))
def test_pure_exported_programs_are_accepted(name: str, tmp_path: Path) -> None:
    build, shape = PURE_MODELS[name]
    torch.manual_seed(0)
    module = build()
    input_name = _input_name(module)
    program = torch.export.export(module.eval(), (torch.randn(*shape),))
    torch.export.save(program, str(tmp_path / f"{name}.pt2"))
    info = _inspect(tmp_path / f"{name}.pt2", tmp_path)
    assert [t.name for t in info.inputs] == [input_name]


@pytest.mark.parametrize("how", ["script", "trace"])
def test_torchscript_reading_a_file_is_refused_naming_the_operator(
    how: str, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.bin"
    secret.write_bytes(torch.tensor([1.0, 2.0, 3.0, 4.0]).numpy().tobytes())
    path = _save_torchscript(_ReadsAFile(str(secret)), tmp_path / "reads.pt", how=how, shape=(4,))
    # What the check protects against: torch loads and runs this archive as it is.
    leaked = torch.jit.load(str(path))(torch.zeros(4))
    assert leaked.tolist() == [1.0, 2.0, 3.0, 4.0]
    with pytest.raises(UnsafeArchiveError, match=r"'aten::from_file'.*line \d+"):
        _inspect(path, tmp_path, input_shapes='{"x": [4]}')


def test_torchscript_writing_a_file_is_refused_naming_the_operator(tmp_path: Path) -> None:
    path = _save_torchscript(
        _WritesAFile(str(tmp_path / "out.pt")), tmp_path / "writes.pt", how="script", shape=(4,)
    )
    with pytest.raises(UnsafeArchiveError, match="'aten::save'"):
        _inspect(path, tmp_path, input_shapes='{"x": [4]}')


class _Adds(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.add(x, self.weight)


@pytest.fixture(scope="module")
def adds_archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, bytes]:
    """A scripted module and its code member, to rewrite as an attacker would."""
    path = tmp_path_factory.mktemp("adds") / "adds.pt"
    torch.jit.script(_Adds()).save(str(path))
    with zipfile.ZipFile(path) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".py"))
        return path, name, archive.read(name)


_RETURN = b"    return torch.add(x, weight)\n"


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ('ops.aten.save(x, "/tmp/stolen.pt")', "'aten::save'"),
        ('torch.ops.aten.from_file("/etc/passwd", False, 4)', "'aten::from_file'"),
        ("torch._share_memory_(x)", "'aten::_share_memory_'"),
        ("ops.prim.PythonOp(x)", "'prim::PythonOp'"),
        ("ops.prim.Print(x)", "'prim::Print'"),
        ('ops.prim.rpc_sync("worker", x)', "'prim::rpc_sync'"),
        ("ops.myops.run(x)", "'myops::run'"),
        ("torch.ops.quantized.linear(x)", "'quantized::linear'"),
        ("torch.classes.myops.Runner(x)", "'torch.classes.myops.Runner'"),
        ("__torch__.torch.classes.myops.Runner(x)", "custom class '__torch__.torch.classes"),
        ("print(x)", "'print'"),
        ('weight.save("/tmp/stolen.pt")', "the method 'save'"),
        # `_0` is bound to a submodule class and to a tensor: not a module, whatever the order.
        (
            '_0 = self\n    _0 = weight\n    _0.save("/tmp/stolen.pt")',
            "the method 'save'",
        ),
        ('getattr(torch, "from_file")("/etc/passwd")', "'torch' as a value"),
        ("import os", "an import"),
        ('os.system("id")', "'os.system'"),
    ],
)
def test_torchscript_code_outside_the_allow_list_is_refused(
    body: str, named: str, adds_archive: tuple[Path, str, bytes], tmp_path: Path
) -> None:
    source_path, name, source = adds_archive
    assert _RETURN in source, source
    edited = source.replace(_RETURN, f"    {body}\n".encode() + _RETURN)
    path = rewrite_zip(source_path, tmp_path / "edited.pt", {name: edited})
    with pytest.raises(UnsafeArchiveError, match=named.replace("(", r"\(")):
        _inspect(path, tmp_path, input_shapes='{"x": [4]}')


def test_torchscript_that_torch_would_run_to_write_a_file_is_refused(
    adds_archive: tuple[Path, str, bytes], tmp_path: Path
) -> None:
    source_path, name, source = adds_archive
    target = tmp_path / "written.pt"
    edited = source.replace(_RETURN, f'    ops.aten.save(x, "{target}")\n'.encode() + _RETURN)
    path = rewrite_zip(source_path, tmp_path / "edited.pt", {name: edited})
    torch.jit.load(str(path))(torch.zeros(4))
    assert target.exists()  # the attack works when the archive is loaded unchecked
    target.unlink()
    with pytest.raises(UnsafeArchiveError, match="'aten::save'"):
        _inspect(path, tmp_path, input_shapes='{"x": [4]}')


@pytest.fixture(scope="module")
def tiny_program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pt2") / "tiny.pt2"
    program = torch.export.export(tiny_module(), (torch.randn(2, 8),))
    torch.export.save(program, str(path))
    return path


@pytest.mark.parametrize(
    ("target", "named"),
    [
        ("torch.ops.aten.from_file.default", "'aten::from_file'"),
        ("torch.ops.aten.save.default", "'aten::save'"),
        ("torch.ops.aten._share_memory_.default", "'aten::_share_memory_'"),
        ("torch.ops.myops.run.default", "'myops::run'"),
        ("torch.ops.higher_order.run_python", "'higher_order::run_python'"),
        ("torch.ops.prim.PythonOp", "'prim::PythonOp'"),
        ("builtins.open", "'builtins.open'"),
    ],
)
def test_exported_program_calling_an_operator_outside_the_allow_list_is_refused(
    target: str, named: str, tiny_program: Path, tmp_path: Path
) -> None:
    with zipfile.ZipFile(tiny_program) as archive:
        name = next(n for n in archive.namelist() if n.endswith("models/model.json"))
        program = json.loads(archive.read(name))
    nodes = program["graph_module"]["graph"]["nodes"]
    nodes[len(nodes) // 2]["target"] = target
    path = rewrite_zip(tiny_program, tmp_path / "edited.pt2", {name: json.dumps(program).encode()})
    with pytest.raises(UnsafeArchiveError, match=named):
        _inspect(path, tmp_path)


def _schemas() -> dict[str, list[Any]]:
    found: dict[str, list[Any]] = {}
    for schema in torch._C._jit_get_all_schemas():
        found.setdefault(schema.name, []).append(schema)
    return found


def test_every_allowed_operator_is_a_real_operator() -> None:
    schemas = _schemas()
    missing = sorted(
        f"{ns}::{name}"
        for ns, names in (("aten", ATEN_OPERATORS), ("prim", PRIM_OPERATORS))
        for name in names
        if f"{ns}::{name}" not in schemas
    )
    assert missing == [], missing


def test_no_allowed_operator_takes_a_file_name() -> None:
    """An operator with a file or path argument reads or writes files: none may be allowed."""
    offenders = sorted(
        name
        for name, schemas in _schemas().items()
        if operator_allowed(*name.split("::", 1))
        for schema in schemas
        if any(
            arg.name in ("filename", "path", "file", "f") and "str" in str(arg.type)
            for arg in schema.arguments
        )
    )
    assert offenders == []
    for namespace, name in [
        ("aten", "from_file"),
        ("aten", "save"),
        ("aten", "_share_memory_"),
        ("prim", "PythonOp"),
        ("prim", "Print"),
        ("prim", "rpc_async"),
        ("prim", "profile"),
    ]:
        assert not operator_allowed(namespace, name), (namespace, name)
