"""The pool process's side of a scratch folder that a hostile job process could have filled
with links: nothing outside the folder is read, written or deleted through them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from worker.protocol import ProtocolError
from worker.scratch import ScratchFolder


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "outside" / "modelpress.db"
    path.parent.mkdir()
    path.write_bytes(b"database pages")
    return path


def test_a_linked_file_or_folder_is_not_copied_out(tmp_path: Path, secret: Path) -> None:
    scratch = ScratchFolder(tmp_path / "scratch")
    (scratch.root / "out").mkdir()
    os.symlink(secret, scratch.root / "out" / "optimized.onnx")
    os.symlink(secret.parent, scratch.root / "linked")
    with pytest.raises(ProtocolError):
        scratch.copy_out("out/optimized.onnx", tmp_path / "stored")
    with pytest.raises(ProtocolError):
        scratch.copy_out("linked/modelpress.db", tmp_path / "stored")
    with pytest.raises(ProtocolError):
        scratch.copy_out("../outside/modelpress.db", tmp_path / "stored")
    assert not (tmp_path / "stored").exists()

    (scratch.root / "out" / "real.onnx").write_bytes(b"model")
    digest = scratch.copy_out("out/real.onnx", tmp_path / "stored")
    assert (tmp_path / "stored").read_bytes() == b"model" and len(digest) == 64


def test_nothing_is_written_or_deleted_through_a_link(tmp_path: Path, secret: Path) -> None:
    scratch = ScratchFolder(tmp_path / "scratch")
    source = tmp_path / "input.onnx"
    source.write_bytes(b"the next user's model")
    os.symlink(secret.parent, scratch.root / "input")
    os.symlink(secret, scratch.root / "request.json")
    with pytest.raises(ProtocolError):
        scratch.copy_in("input/model.onnx", source)
    with pytest.raises(FileExistsError):
        scratch.write_bytes("request.json", b"{}")
    assert sorted(p.name for p in secret.parent.iterdir()) == ["modelpress.db"]
    assert secret.read_bytes() == b"database pages"

    scratch.empty()
    assert list(scratch.root.iterdir()) == []
    assert secret.read_bytes() == b"database pages"
