"""`modelpress jobs|batches|models|datasets delete` against a real API server (no worker: jobs
finish by being canceled): what a user or a CI job sees, output and exit codes."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ADMIN_KEY
from tests.integration.processes import BIN, ROOT, Service, run_service
from tests.models.onnx_basic import make_dataset, make_mlp

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def api_only(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    yield from run_service(tmp_path_factory.mktemp("cli-delete"), None, with_worker=False)


@pytest.fixture
def http(api_only: Service) -> Iterator[httpx.Client]:
    with api_only.client() as client:
        yield client


def cli(service: Service, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The installed command, as a user runs it: stdin is not a terminal; the client package
    of this checkout, and no service code, on its path."""
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "COLUMNS": "200",
        "PYTHONPATH": str(ROOT / "client"),
        "MODELPRESS_URL": service.base_url,
        "MODELPRESS_API_KEY": ADMIN_KEY,
    }
    return subprocess.run(
        [str(BIN / "modelpress"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
    )


def _upload(http: httpx.Client, route: str, path: Path) -> dict[str, Any]:
    with path.open("rb") as handle:
        answer = http.post(f"/v1/{route}", files={"file": (path.name, handle)})
    assert answer.status_code == 201, answer.text
    return dict(answer.json())


def _spec(model_id: str, dataset_id: str) -> dict[str, Any]:
    return {
        "model_id": model_id,
        "passes": [{"kind": "quantize", "method": "dynamic"}],
        "evaluate": {"dataset_id": dataset_id, "metric": "fidelity"},
    }


def test_delete_commands_ask_refuse_in_use_and_delete(
    api_only: Service, http: httpx.Client, tmp_path: Path
) -> None:
    model = _upload(http, "models", make_mlp(tmp_path / "mlp.onnx"))
    dataset = _upload(http, "datasets", make_dataset(tmp_path / "d.npz", tmp_path / "mlp.onnx"))
    job = http.post("/v1/jobs", json=_spec(model["id"], dataset["id"])).json()

    # Without --yes and without a terminal to ask on, nothing is deleted.
    asked = cli(api_only, tmp_path, "jobs", "delete", job["id"])
    assert asked.returncode == 2, asked.stderr
    assert "--yes" in asked.stderr
    assert http.get(f"/v1/jobs/{job['id']}").status_code == 200

    # An unfinished job, and what it reads, are refused with the service's reason (exit 5).
    active = cli(api_only, tmp_path, "jobs", "delete", job["id"], "--yes")
    assert active.returncode == 5, active.stderr
    assert "409" in active.stderr and "cancel" in active.stderr
    for noun, resource_id in (("models", model["id"]), ("datasets", dataset["id"])):
        in_use = cli(api_only, tmp_path, noun, "delete", resource_id, "--yes")
        assert in_use.returncode == 5, in_use.stderr
        assert job["id"] in in_use.stderr.replace("\n", "")
        assert http.get(f"/v1/{noun}/{resource_id}").status_code == 200

    http.post(f"/v1/jobs/{job['id']}/cancel")
    deleted = cli(api_only, tmp_path, "jobs", "delete", job["id"], "--yes", "--json")
    assert deleted.returncode == 0, deleted.stderr
    assert json.loads(deleted.stdout) == {"id": job["id"], "deleted": True}
    assert http.get(f"/v1/jobs/{job['id']}").status_code == 404

    for noun, resource_id in (("models", model["id"]), ("datasets", dataset["id"])):
        done = cli(api_only, tmp_path, noun, "delete", resource_id, "-y")
        assert done.returncode == 0, done.stderr
        assert f"{noun[:-1]} {resource_id} deleted" in done.stdout
        assert http.get(f"/v1/{noun}/{resource_id}").status_code == 404

    gone = cli(api_only, tmp_path, "jobs", "delete", job["id"], "--yes")
    assert gone.returncode == 5 and "404" in gone.stderr


def test_batches_delete_waits_for_the_batch_to_be_canceled(
    api_only: Service, http: httpx.Client, tmp_path: Path
) -> None:
    model = _upload(http, "models", make_mlp(tmp_path / "mlp.onnx"))
    dataset = _upload(http, "datasets", make_dataset(tmp_path / "d.npz", tmp_path / "mlp.onnx"))
    spec = _spec(model["id"], dataset["id"])
    batch = http.post("/v1/batches", json={"jobs": [spec, spec]}).json()

    active = cli(api_only, tmp_path, "batches", "delete", batch["id"], "--yes")
    assert active.returncode == 5, active.stderr
    assert "unfinished" in active.stderr

    http.post(f"/v1/batches/{batch['id']}/cancel")
    deleted = cli(api_only, tmp_path, "batches", "delete", batch["id"], "--yes")
    assert deleted.returncode == 0, deleted.stderr
    assert f"batch {batch['id']} deleted" in deleted.stdout
    assert http.get(f"/v1/batches/{batch['id']}").status_code == 404
    assert all(http.get(f"/v1/jobs/{j['id']}").status_code == 404 for j in batch["jobs"])


def test_a_job_whose_artifacts_expired_says_so(
    api_only: Service, http: httpx.Client, tmp_path: Path
) -> None:
    model = _upload(http, "models", make_mlp(tmp_path / "mlp.onnx"))
    dataset = _upload(http, "datasets", make_dataset(tmp_path / "d.npz", tmp_path / "mlp.onnx"))
    job = http.post("/v1/jobs", json=_spec(model["id"], dataset["id"])).json()
    # As retention leaves a succeeded job: its numbers kept, its artifacts gone.
    database = Path(api_only.env["MODELPRESS_DATA_DIR"]) / "modelpress.db"
    with sqlite3.connect(database) as connection:
        connection.execute(
            "UPDATE jobs SET status = 'succeeded', finished_at = '2026-01-01 00:00:00', "
            "artifacts_expired_at = '2026-02-01 00:00:00' WHERE id = ?",
            (job["id"],),
        )

    shown = cli(api_only, tmp_path, "jobs", "show", job["id"])
    assert shown.returncode == 0, shown.stderr
    assert "artifacts removed by retention on 2026-02-01" in shown.stdout

    download = cli(api_only, tmp_path, "download", job["id"], "--to", str(tmp_path / "out"))
    assert download.returncode == 5, download.stderr
    assert "retention" in download.stderr
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []
