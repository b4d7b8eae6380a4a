"""Uploaded PyTorch programs that attack the worker, for the confinement tests: TorchScript
can open any file with torch.from_file (read it, or create and write it through a shared
mapping), and allocate without bound. torch is imported inside the functions."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core import storage_keys
from core.db import new_id
from core.storage import Storage
from core.tables import Project, StoredModel
from optimizers.formats.kinds import storage_name
from optimizers.results import ModelInfo, TensorInfo


def insert_stored_model(
    session: Session, storage: Storage, *, path: Path, info: dict[str, Any]
) -> str:
    """A stored model as an upload would leave it, without the upload's checks: the upload
    refuses these programs, and the tests show what the sandbox does with one that got by."""
    model_id = new_id("mdl")
    project_id = session.scalars(select(Project.id)).first()
    assert project_id is not None
    key = storage_keys.model_key(project_id, model_id, storage_name(info["format"]))
    staged = path.with_suffix(".staged")  # storing moves the file
    staged.write_bytes(path.read_bytes())
    storage.put_file(key, staged)
    session.add(
        StoredModel(
            id=model_id,
            project_id=project_id,
            name=path.name,
            format=info["format"],
            sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
            size_bytes=path.stat().st_size,
            storage_key=key,
            info=info,
        )
    )
    return model_id


def save_thief(path: Path, *, canary: Path, size: int) -> Path:
    """A module whose output is the first `size` bytes of the canary file: once converted,
    the bytes are a constant of the ONNX model."""
    import torch

    class Thief(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.canary = str(canary)
            self.size = size

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            stolen = torch.from_file(self.canary, shared=False, size=self.size, dtype=torch.uint8)
            return x * 0.0 + stolen.to(torch.float32)

    torch.jit.script(Thief().eval()).save(str(path))
    return path


def save_vandal(path: Path, *, marker: Path) -> Path:
    """A module that creates and writes the file `marker` when it runs."""
    import torch

    class Vandal(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.marker = str(marker)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            mark = torch.from_file(self.marker, shared=True, size=8, dtype=torch.uint8)
            written = mark.fill_(1)
            return x + written[0].to(torch.float32)

    torch.jit.script(Vandal().eval()).save(str(path))
    return path


def save_glutton(path: Path, *, gigabytes: int, features: int = 8) -> Path:
    """A module that writes `gigabytes` of memory before it computes anything."""
    import torch

    class Glutton(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.elements = gigabytes * (1 << 30) // 4

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            hoard = torch.ones(self.elements)
            return x + hoard[0]

    torch.jit.script(Glutton().eval()).save(str(path))
    return path


def torchscript_info(path: Path, *, features: int) -> dict[str, Any]:
    """What an upload would record for a TorchScript file with one input x[batch, features]."""
    return ModelInfo(
        format="torchscript",
        opset=17,
        ir_version=None,
        producer="TorchScript",
        inputs=[TensorInfo(name="x", dtype="float32", shape=["batch", features])],
        outputs=[],
        parameter_count=0,
        size_bytes=path.stat().st_size,
    ).model_dump()
