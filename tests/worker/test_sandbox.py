"""Jobs run confined (worker.sandbox, worker.jobhost): hostile uploaded programs run in the
real sandbox through the real runner, against a real database and storage, and the job
process is inspected from outside while it runs.

The hostile models are stored past the upload checks (the API may refuse them at upload):
what is proven here is that the job itself cannot do harm when such a model gets through.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from core.db import session_scope
from core.sandbox import host_command, probe
from core.settings import get_settings
from core.storage import get_storage
from tests.api.helpers import upload_model
from tests.conftest import ADMIN_KEY
from tests.integration.processes import start_redis
from tests.models.onnx_basic import make_mlp
from tests.ports import free_port
from tests.worker.hostile import (
    insert_stored_model,
    save_glutton,
    save_thief,
    save_vandal,
    torchscript_info,
)
from worker import sandbox
from worker.runner import execute_job

# The job host imports torch when it starts: many seconds on a busy small machine.
pytestmark = pytest.mark.timeout(900)

QUICK_BENCHMARK = {"batch_sizes": [1], "warmup": 1, "iterations": 3, "threads": 1}
CANARY = b"modelpress-canary:" + hashlib.sha256(b"canary").hexdigest().encode()[:46]


def _insert_model(path: Path, info: dict[str, Any]) -> str:
    with session_scope() as session:
        return insert_stored_model(session, get_storage(), path=path, info=info)


def _run_job(client: TestClient, spec: dict[str, Any]) -> dict[str, Any]:
    created = client.post("/v1/jobs", json={"benchmark": QUICK_BENCHMARK, **spec})
    assert created.status_code == 202, created.text
    job_id = created.json()["id"]
    execute_job(job_id, settings=get_settings(), storage=get_storage())
    job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
    return job


def _everything_the_job_left(client: TestClient, job: dict[str, Any]) -> bytes:
    """The job as the API shows it, plus the content of every artifact it stored."""
    parts = [repr(job).encode()]
    for artifact in client.get(f"/v1/jobs/{job['id']}/artifacts").json():
        parts.append(client.get(f"/v1/artifacts/{artifact['id']}/content").content)
    return b"\n".join(parts)


def _encodings(secret: bytes) -> list[bytes]:
    """The secret's bytes as a model could carry them: raw, or as numbers of any dtype."""
    values = np.frombuffer(secret, np.uint8)
    found = [secret, secret.decode(errors="replace").encode()]
    for dtype in (np.float32, np.float16, np.float64, np.int32, np.int64, np.int8, np.int16):
        found.append(values.astype(dtype).tobytes()[:64])
    return found


def test_a_hostile_program_can_neither_read_a_file_outside_its_folder_nor_write_one(
    client: TestClient, service_env: dict[str, str], tmp_path: Path
) -> None:
    data_dir = Path(service_env["MODELPRESS_DATA_DIR"])
    canary = data_dir / "canary.bin"
    canary.write_bytes(CANARY)
    marker = data_dir / "marker"
    thief = save_thief(tmp_path / "thief.pt", canary=canary, size=len(CANARY))
    vandal = save_vandal(tmp_path / "vandal.pt", marker=marker)
    quantize = [{"kind": "quantize", "method": "dynamic"}]

    stolen = _run_job(
        client,
        {
            "model_id": _insert_model(thief, torchscript_info(thief, features=len(CANARY))),
            "passes": quantize,
        },
    )
    # It fails: the file is not there for it. Nothing of the canary is anywhere in the job.
    assert stolen["status"] == "failed", stolen
    assert stolen["error"]["type"] == "invalid_model"
    left = _everything_the_job_left(client, stolen)
    for encoding in _encodings(CANARY):
        assert encoding not in left

    vandalized = _run_job(
        client,
        {
            "model_id": _insert_model(vandal, torchscript_info(vandal, features=8)),
            "passes": quantize,
        },
    )
    assert vandalized["status"] == "failed", vandalized
    assert not marker.exists()
    assert not list(data_dir.rglob("marker"))


def test_a_program_that_allocates_50_gb_is_stopped_and_the_next_job_runs(
    client: TestClient, service_env: dict[str, str], tmp_path: Path
) -> None:
    glutton = save_glutton(tmp_path / "glutton.pt", gigabytes=50)
    model_id = _insert_model(glutton, torchscript_info(glutton, features=8))
    job = _run_job(
        client,
        {
            "model_id": model_id,
            "passes": [{"kind": "quantize", "method": "dynamic"}],
            "limits": {"memory_limit_mb": 2000},
        },
    )
    assert job["status"] == "failed", job
    assert job["error"]["type"] == "memory_limit"
    assert "memory limit of 2000 MB" in job["error"]["message"]

    # Without a limit in the spec, the machine's memory is the limit.
    unbounded = _run_job(
        client, {"model_id": model_id, "passes": [{"kind": "quantize", "method": "dynamic"}]}
    )
    assert unbounded["error"]["type"] == "memory_limit", unbounded

    small = upload_model(client, make_mlp(tmp_path / "mlp.onnx"))
    done = _run_job(
        client, {"model_id": small["id"], "passes": [{"kind": "quantize", "method": "dynamic"}]}
    )
    assert done["status"] == "succeeded", done["error"]


@pytest.fixture
def secrets(monkeypatch: pytest.MonkeyPatch, service_env: dict[str, str]) -> Iterator[list[str]]:
    """Settings with every kind of secret a worker holds, as the worker's environment."""
    data_dir = Path(service_env["MODELPRESS_DATA_DIR"])
    values = {
        "MODELPRESS_DATABASE_URL": f"sqlite:///{data_dir / 'modelpress.db'}",
        "MODELPRESS_BROKER_URL": "redis://:broker-password@127.0.0.1:6399/0",
        "MODELPRESS_STORAGE_URL": "s3://secret-bucket/prefix",
        "AWS_ACCESS_KEY_ID": "AKIASECRETKEYID0000",
        "AWS_SECRET_ACCESS_KEY": "aws-secret-access-key-value",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    yield [*values.values(), ADMIN_KEY]
    get_settings.cache_clear()


def _long_job(host: sandbox.JobHost, model: Path) -> sandbox.JobProcess:
    """A job process busy in a long benchmark, started directly on the host."""
    import json

    host.scratch.empty()
    host.scratch.copy_in("input/model.onnx", model)
    spec = {
        "passes": [{"kind": "quantize", "method": "dynamic"}],
        # Warm-up runs report no progress: minutes in one step even on a fast machine.
        "benchmark": {"batch_sizes": [1024], "warmup": 9_000, "iterations": 1, "threads": 1},
    }
    info: dict[str, Any] = {}
    request = {
        "job_id": "job_probe",
        "spec": spec,
        "model": {"path": "input/model.onnx", "format": "onnx", "info": info},
        "extra_models": {},
        "datasets": {},
        "max_total_bytes": 1 << 30,
    }
    host.scratch.write_bytes("request.json", json.dumps(request).encode())
    limits = sandbox.kernel_limits(get_settings(), memory_mb=None, hard_time_s=600)
    return host.start_job(limits)


def _slow_model(folder: Path) -> Path:
    return make_mlp(folder / "slow.onnx", in_features=256, hidden=1024, classes=10)


def test_the_job_process_holds_no_secret_and_reaches_only_its_folder(
    secrets: list[str], service_env: dict[str, str], tmp_path: Path
) -> None:
    settings = get_settings()
    data_dir = settings.data_dir
    (data_dir / "tmp" / "sandbox" / "other-job").mkdir(parents=True)
    (data_dir / "tmp" / "sandbox" / "other-job" / "request.json").write_text("{}")
    host = sandbox.job_host(settings)
    host.wait_ready()
    process = _long_job(host, _slow_model(tmp_path))
    try:
        deadline = time.monotonic() + 120
        seen: list[dict[str, Any]] = []
        while not any(m == {**m, "type": "progress", "stage": "benchmarking"} for m in seen):
            assert time.monotonic() < deadline, seen
            seen.extend(process.poll(0.2))
            assert process.exitcode is None, seen
        proc = Path(f"/proc/{process.pid}")
        environ = (proc / "environ").read_bytes()
        for secret in secrets:
            assert secret.encode() not in environ
        assert b"MODELPRESS_" not in environ and b"AWS_" not in environ
        # Its own network, mounts and processes: nothing of this machine's.
        for namespace in ("net", "mnt", "pid", "ipc", "user"):
            assert os.readlink(proc / "ns" / namespace) != os.readlink(f"/proc/self/ns/{namespace}")
        # Its file system: the software read-only and its scratch folder; no data folder, no
        # database, no other job's folder, nothing of home folders but the Python install.
        root = proc / "root"
        assert not (root / data_dir.relative_to("/")).exists()
        assert not (root / settings.resolved_database_url.split("///")[1].lstrip("/")).exists()
        assert sorted(os.listdir(root / "job")) == sorted(os.listdir(host.scratch.root))
        assert os.listdir(root / "root") == [".pyenv"] or not (root / "root").exists()
        with pytest.raises(OSError):
            (root / "usr" / "modelpress-write-test").write_text("x")
        limits = (proc / "limits").read_text()
        assert "Max data size" in limits and "unlimited" not in _line(limits, "Max data size")
        assert "unlimited" not in _line(limits, "Max cpu time")
        assert "unlimited" not in _line(limits, "Max file size")
    finally:
        process.kill()
        process.close()
        host.scratch.empty()


def _line(text: str, prefix: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(prefix))


def test_the_sandbox_reaches_no_server_on_loopback_and_no_data(
    service_env: dict[str, str], tmp_path: Path
) -> None:
    """A program started the way the job host is (same command line, namespaces, mounts)
    tries what the job process would: Redis on loopback, the database file."""
    settings = get_settings()
    port = free_port()
    redis = start_redis(tmp_path, port)
    try:
        with socket.create_connection(("127.0.0.1", port), 2):
            pass  # reachable from here
        database = settings.data_dir / "modelpress.db"
        assert database.exists()
        code = (
            "import socket, sys\n"
            "try:\n"
            f"    socket.create_connection(('127.0.0.1', {port}), 2)\n"
            "    print('connected')\n"
            "except OSError as exc:\n"
            "    print('refused', exc)\n"
            "try:\n"
            f"    open({str(database)!r}, 'rb')\n"
            "    print('opened')\n"
            "except OSError as exc:\n"
            "    print('missing', exc)\n"
        )
        command = host_command(
            settings, scratch=tmp_path / "scratch", channel_fd=-1, program=["-c", code]
        )
        (tmp_path / "scratch").mkdir()
        done = subprocess.run(command.argv, env=command.env, capture_output=True, timeout=60)
        out = done.stdout.decode()
        assert done.returncode == 0, done.stderr
        assert "refused" in out and "connected" not in out
        assert "missing" in out and "opened" not in out
    finally:
        redis.stop()


def test_without_a_sandbox_the_worker_refuses_jobs_unless_unconfined_jobs_are_allowed(
    client: TestClient, service_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MODELPRESS_BWRAP_PATH", str(tmp_path / "no-bwrap"))
    get_settings.cache_clear()
    settings = get_settings()
    assert probe(settings, max_age_s=0) is not None
    assert "bubblewrap" in str(probe(settings, max_age_s=0))
    model = upload_model(client, make_mlp(tmp_path / "mlp.onnx"))
    created = client.post(
        "/v1/jobs",
        json={
            "model_id": model["id"],
            "passes": [{"kind": "quantize", "method": "dynamic"}],
            "benchmark": QUICK_BENCHMARK,
        },
    ).json()
    assert execute_job(created["id"], settings=settings, storage=get_storage()) is None
    assert client.get(f"/v1/jobs/{created['id']}").json()["status"] == "queued"

    monkeypatch.setenv("MODELPRESS_UNSAFE_UNCONFINED_JOBS", "true")
    get_settings.cache_clear()
    unconfined = get_settings()
    assert probe(unconfined, max_age_s=0) is None
    assert execute_job(created["id"], settings=unconfined, storage=get_storage()) == "succeeded"
    assert not sandbox.job_host(unconfined).confined


def test_the_job_host_and_its_job_die_with_the_pool_process(
    service_env: dict[str, str], tmp_path: Path
) -> None:
    """A pool process killed from outside must leave no job process running on."""
    model = _slow_model(tmp_path)
    read_end, write_end = os.pipe()
    pool = os.fork()
    if pool == 0:  # pragma: no cover - the forked pool process
        os.close(read_end)
        try:
            sandbox._host = None  # its own host, not the test process's
            host = sandbox.job_host(get_settings())
            host.wait_ready()
            process = _long_job(host, model)
            os.write(write_end, f"{host.process.pid} {process.pid}\n".encode())
            time.sleep(600)
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        pids = [int(pid) for pid in pipe.readline().split()]
    assert len(pids) == 2 and all(_alive(pid) for pid in pids)
    os.kill(pool, 9)
    os.waitpid(pool, 0)
    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in pids):
        assert time.monotonic() < deadline, f"{pids} outlived the pool process"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    """Running or sleeping; a zombie (dead, not yet reaped by whoever adopted it) is not."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_the_job_host_ends_quietly_when_its_pool_process_resets_the_channel(
    service_env: dict[str, str], tmp_path: Path
) -> None:
    """A worker stopped with its whole process group (`make run`'s `kill 0`) resets the job
    host's channel; the host must end without a traceback in the worker's log."""
    ours, theirs = socket.socketpair()
    command = host_command(get_settings(), scratch=tmp_path, channel_fd=theirs.fileno())
    host = subprocess.Popen(
        command.argv,
        env=command.env,
        pass_fds=[theirs.fileno()],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    theirs.close()
    ours.settimeout(120)
    # Its "ready" is left unread: closing a socket with unread data resets the peer's end.
    assert ours.recv(1, socket.MSG_PEEK) == b"{"
    ours.close()
    output, _ = host.communicate(timeout=30)
    assert host.returncode == 0, output.decode(errors="replace")
    assert b"Traceback" not in output
