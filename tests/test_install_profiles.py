"""The install profiles in pyproject.toml and the Makefile that installs them: the API process
runs on `pip install .` alone, which names neither torch nor onnxruntime; the worker and GPU
profiles add what runs jobs; the Makefile builds its venv from any Python 3.11 or newer."""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import subprocess
import tomllib
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.integration.processes import run_service
from tests.models.onnx_basic import make_dataset, make_mlp
from tests.models.torch_programs import IN_FEATURES, save_torchscript

ROOT = Path(__file__).resolve().parents[1]
NEVER_IN_THE_API = {"torch", "onnxruntime", "onnxruntime-gpu"}


def _project() -> dict[str, Any]:
    project: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return project


def _profile(extras: Iterable[str] = ()) -> list[Requirement]:
    """The requirements `pip install .[extras]` asks for, self-referencing extras followed."""
    project = _project()
    requirements = [Requirement(line) for line in project["dependencies"]]
    pending, seen = list(extras), set()
    while pending:
        extra = pending.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for line in project["optional-dependencies"][extra]:
            requirement = Requirement(line)
            if canonicalize_name(requirement.name) == canonicalize_name(project["name"]):
                pending.extend(requirement.extras)
            else:
                requirements.append(requirement)
    return requirements


def _applies(marker: Marker | None, extras: set[str]) -> bool:
    if marker is None:
        return True
    return any(marker.evaluate({"extra": extra}) for extra in extras | {""})


def _installed_closure(requirements: list[Requirement]) -> set[str]:
    """Every distribution that installing `requirements` brings, as installed here."""
    found: set[str] = set()
    pending = [(r.name, set(r.extras)) for r in requirements if _applies(r.marker, set())]
    visited: set[tuple[str, frozenset[str]]] = set()
    while pending:
        name, extras = pending.pop()
        key = (canonicalize_name(name), frozenset(extras))
        if key in visited:
            continue
        visited.add(key)
        found.add(key[0])
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue  # not for this platform or Python
        for line in requires:
            requirement = Requirement(line)
            if _applies(requirement.marker, extras):
                pending.append((requirement.name, set(requirement.extras)))
    return found


def _modules_outside(distributions: set[str]) -> set[str]:
    """Top-level modules installed here that none of `distributions` provides."""
    return {
        module
        for module, owners in importlib.metadata.packages_distributions().items()
        if not {canonicalize_name(owner) for owner in owners} & distributions
    }


def test_the_api_profile_names_neither_torch_nor_onnxruntime() -> None:
    api = {canonicalize_name(r.name) for r in _profile()}
    assert api.isdisjoint(NEVER_IN_THE_API), api & NEVER_IN_THE_API
    # ... nor does anything it pulls in, as installed here.
    closure = _installed_closure(_profile())
    assert closure.isdisjoint(NEVER_IN_THE_API), closure & NEVER_IN_THE_API

    worker = {canonicalize_name(r.name) for r in _profile(["worker"])}
    assert {"torch", "onnxruntime"} <= worker
    # onnxruntime and onnxruntime-gpu install the same module: a GPU install holds one of them.
    gpu = {canonicalize_name(r.name) for r in _profile(["gpu"])}
    assert {"torch", "onnxruntime-gpu"} <= gpu and "onnxruntime" not in gpu


def _sitecustomize(blocked: set[str]) -> str:
    """A module that Python imports at start-up (from PYTHONPATH) and that makes importing any
    of `blocked` fail as if it were not installed."""
    return f"""
import sys

_BLOCKED = frozenset({json.dumps(sorted(blocked))})


class _NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in _BLOCKED:
            message = f"No module named {{name!r}} (not in the api profile)"
            raise ModuleNotFoundError(message, name=name)
        return None


sys.meta_path.insert(0, _NotInstalled())
"""


def test_the_api_serves_with_only_the_api_profile_importable(tmp_path: Path) -> None:
    """The API process started where only the api profile's packages can be imported: torch,
    onnxruntime and everything else of the worker, GPU and dev profiles fail to import. It
    starts, checks uploads and queues a job."""
    blocked = _modules_outside(_installed_closure(_profile()) | {"modelpress"})
    assert {"torch", "onnxruntime", "psutil", "pytest"} <= blocked
    site = tmp_path / "api-profile-only"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_sitecustomize(blocked))

    model = make_mlp(tmp_path / "tiny.onnx")
    dataset = make_dataset(tmp_path / "tiny.npz", model)
    scripted = save_torchscript(tmp_path / "tiny.pt")

    env = {"PYTHONPATH": f"{site}:{ROOT}"}
    with contextmanager(run_service)(tmp_path / "service", None, env, with_worker=False) as service:
        with service.client() as http:
            assert http.get("/healthz").json() == {"status": "ok"}
            assert http.get("/readyz").status_code == 200

            with model.open("rb") as handle:
                uploaded = http.post("/v1/models", files={"file": ("tiny.onnx", handle)})
            assert uploaded.status_code == 201, uploaded.text
            assert uploaded.json()["inputs"][0]["name"] == "x"
            with scripted.open("rb") as handle:
                program = http.post(
                    "/v1/models",
                    files={"file": ("tiny.pt", handle)},
                    data={"input_shapes": json.dumps({"x": ["batch", IN_FEATURES]})},
                )
            assert program.status_code == 201, program.text
            assert program.json()["format"] == "torchscript"
            refused = http.post("/v1/models", files={"file": ("bad.onnx", b"\x08\x07garbage")})
            assert refused.status_code == 422, refused.text
            assert refused.headers["content-type"] == "application/problem+json"

            with dataset.open("rb") as handle:
                data = http.post("/v1/datasets", files={"file": ("tiny.npz", handle)})
            assert data.status_code == 201, data.text

            spec = {
                "model_id": uploaded.json()["id"],
                "passes": [{"kind": "quantize", "method": "dynamic"}],
                "evaluate": {"dataset_id": data.json()["id"], "metric": "accuracy"},
            }
            job = http.post("/v1/jobs", json=spec)
            assert job.status_code == 202, job.text
            assert http.get(job.headers["location"]).json()["status"] == "queued"
        log = service.processes["api"].output()
        assert "not in the api profile" not in log, log[-4000:]


def _fake_python(folder: Path, name: str, *, new_enough: bool) -> None:
    """A `name` on PATH that answers the Makefile's version check as a Python that is, or is
    not, 3.11 or newer."""
    script = folder / name
    script.write_text(f"#!/bin/sh\nexit {0 if new_enough else 1}\n")
    script.chmod(0o755)


def _make(*args: str, path: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    make = shutil.which("make")
    assert make, "make is installed (the CI script installs it)"
    return subprocess.run(
        [make, "-C", str(ROOT), f"VENV={tmp_path / 'venv'}", *args],
        env={"PATH": str(path), "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_make_builds_the_venv_from_the_first_python_3_11_or_newer(tmp_path: Path) -> None:
    found = tmp_path / "bin"
    found.mkdir()
    _fake_python(found, "python3.13", new_enough=False)
    _fake_python(found, "python3.12", new_enough=True)
    _fake_python(found, "python3", new_enough=True)
    planned = _make("-n", "install", path=found, tmp_path=tmp_path)
    assert planned.returncode == 0, planned.stderr
    assert f"python3.12 -m venv {tmp_path / 'venv'}" in planned.stdout


def test_make_says_what_to_install_when_no_python_fits(tmp_path: Path) -> None:
    old = tmp_path / "bin"
    old.mkdir()
    _fake_python(old, "python3", new_enough=False)
    refused = _make("install", path=old, tmp_path=tmp_path)
    assert refused.returncode != 0
    assert "needs Python 3.11 or newer" in refused.stderr
    assert "apt-get install python3 python3-venv" in refused.stderr
    assert not (tmp_path / "venv").exists()
