"""What clients rely on without a worker: a client generated from /openapi.json builds and
imports, the example specs are valid jobs, and the CLI's saved login stays private."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from core.jobspec import BatchSpec, JobSpec
from modelpress import config, specs
from tests.integration.processes import BIN, ROOT


def test_a_generated_python_client_builds_from_the_openapi_document(
    client: TestClient, tmp_path: Path
) -> None:
    document = tmp_path / "openapi.json"
    document.write_text(client.get("/openapi.json").text)
    generator = shutil.which("openapi-python-client", path=str(BIN))
    assert generator, "openapi-python-client is a dev dependency"
    result = subprocess.run(
        [
            generator,
            "generate",
            "--path",
            str(document),
            "--output-path",
            str(tmp_path / "gen"),
            "--meta",
            "none",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
        # It formats what it writes with ruff, from the same environment.
        env={**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # Every warning is a part of the API the generator had to skip.
    assert "Warning" not in result.stdout + result.stderr, result.stdout + result.stderr
    check = (
        "from gen.api.jobs import create_job, list_jobs, get_job;"
        "from gen.api.batches import create_batch;"
        "from gen.models import JobOut, JobResult, JobSummary, Comparison, BatchSpec;"
        "from gen import AuthenticatedClient;"
        "AuthenticatedClient(base_url='http://x', token='k');"
        "print(sorted(JobOut.__annotations__)[:3])"
    )
    imported = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, cwd=tmp_path
    )
    assert imported.returncode == 0, imported.stderr


def test_every_example_spec_is_a_valid_job_or_sweep() -> None:
    examples = sorted((ROOT / "examples").glob("*.yaml"))
    assert len(examples) >= 8
    kinds = set()
    for path in examples:
        loaded = specs.load(path)
        documents = loaded.jobs or [loaded.sweep["spec"]] if loaded.sweep else loaded.jobs
        ids = {"model_id": {"tiny.onnx": "mdl_1"}, "dataset_id": {"data": "dst_1"}}
        documents = [
            specs.replace(
                specs.replace(d, "model_id", ids["model_id"]), "dataset_id", ids["dataset_id"]
            )
            for d in documents
        ]
        if loaded.sweep is not None:
            batch = BatchSpec.model_validate(
                {"sweep": {"spec": documents[0], "matrix": loaded.sweep["matrix"]}}
            )
            assert len(batch.jobs) == 6, path
        else:
            for document in documents:
                spec = JobSpec.model_validate(document)
                kinds |= {(p.kind, getattr(p, "method", None)) for p in spec.passes}
    assert {kind for kind, _ in kinds} == {"quantize", "prune", "distill"}


def test_login_is_saved_readable_by_its_user_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.delenv("MODELPRESS_URL", raising=False)
    monkeypatch.delenv("MODELPRESS_API_KEY", raising=False)
    os.umask(0o022)
    path = config.save(url="http://svc:8000", api_key="mpk_secret")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == {"url": "http://svc:8000", "api_key": "mpk_secret"}
    assert config.resolve(None, None) == ("http://svc:8000", "mpk_secret")
    monkeypatch.setenv("MODELPRESS_API_KEY", "mpk_env")
    assert config.resolve("http://other/", None) == ("http://other", "mpk_env")
