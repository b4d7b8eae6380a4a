"""The upload checks run in bounded memory: each crafted file below is checked in a fresh
process whose peak resident memory (VmHWM, reset after the imports) is compared with its
resident memory before the check, and the growth must stay under CHECK_BUDGET whatever the
file's size (the files are built by bench/upload_check_memory.py, which prints the
numbers). Also: describing an ONNX model from its structure copy gives exactly what loading
it whole gives."""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from bench.upload_check_memory import (
    CHECK_BUDGET,
    big_onnx,
    bloated_pt2,
    check_in_child,
    huge_string_pickle,
    many_strings_pickle,
    torchscript_with,
)
from optimizers.formats.upload import inspect_upload
from optimizers.model_info import inspect_model
from tests.models import onnx_zoo as zoo
from tests.models.onnx_basic import make_cnn, make_mlp

LIMIT = 4 << 30


def test_large_onnx_model_is_described_without_loading_its_weights(tmp_path: Path) -> None:
    path = big_onnx(tmp_path / "big.onnx", megabytes=384)
    growth, outcome = check_in_child(path, tmp_path)
    assert outcome == "accepted"
    assert growth < CHECK_BUDGET // 4, f"the check grew the process by {growth >> 20} MiB"


@pytest.mark.parametrize(
    ("member", "make", "refusal"),
    [
        pytest.param(
            "constants.pkl",
            lambda _: many_strings_pickle(8_000_000),
            None,
            id="pickle-of-strings",
        ),
        pytest.param(
            "constants.pkl",
            lambda _: huge_string_pickle(200 << 20),
            "pickled value larger than",
            id="pickle-huge-string",
        ),
        pytest.param(
            # The root module's code, which describing the archive parses.
            "code/__torch__/tests/models/torch_programs",
            lambda source: source + b"a\n" * (1 << 20),
            "tokens",
            id="code-of-a-million-names",
        ),
    ],
)
def test_hostile_torchscript_members_are_checked_within_the_budget(
    tmp_path: Path, member: str, make: Callable[[bytes], bytes], refusal: str | None
) -> None:
    path = torchscript_with(tmp_path / "evil.pt", member, make)
    growth, outcome = check_in_child(path, tmp_path, input_shapes='{"x": ["batch", 8]}')
    if refusal is None:
        assert outcome == "accepted"
    else:
        assert refusal in outcome
    assert growth < CHECK_BUDGET, f"the check grew the process by {growth >> 20} MiB"


def test_pt2_program_of_millions_of_objects_is_refused_within_the_budget(tmp_path: Path) -> None:
    path = bloated_pt2(tmp_path / "bloated.pt2", objects=5 << 20)
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
