"""The `modelpress` command and the Python client against a real API server and worker: what
a CI job or a script sees (output, files, exit codes), including a restart of the API during a
wait and an answer lost on the way back."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import stat
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from modelpress import ChecksumMismatch, Client, Job, JobSummary
from tests.conftest import ADMIN_KEY
from tests.integration.processes import BIN, ROOT, Service, start

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

MODELPRESS = str(BIN / "modelpress")


def cli(
    tmp_path: Path,
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = 900,
    columns: str | None = "200",
) -> subprocess.CompletedProcess[str]:
    """Runs the installed command as a user would: no service code on its path, its login
    in a config folder of its own; a terminal `columns` wide (None: no COLUMNS, as a pipe)."""
    base = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
    }
    if columns is not None:
        base["COLUMNS"] = columns
    return subprocess.run(
        [MODELPRESS, *args],
        capture_output=True,
        text=True,
        env=base | (env or {}),
        timeout=timeout,
        cwd=tmp_path,
    )


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr + result.stdout
    return json.loads(result.stdout)


def write_yaml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


SPEED = "benchmark: {batch_sizes: [1, 8], warmup: 2, iterations: 20}\n"


def test_cli_uploads_sweeps_compares_downloads_and_exits_for_ci(
    service: Service, tiny: Path, tmp_path: Path
) -> None:
    for name in ("tiny.onnx", "tiny.npz"):
        shutil.copy(tiny / name, tmp_path / name)

    login = cli(tmp_path, "login", "--url", service.base_url, "--api-key", ADMIN_KEY, "--json")
    saved = Path(as_json(login)["config"])
    assert saved == tmp_path / "config" / "modelpress" / "config.json"
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert json.loads(saved.read_text())["api_key"] == ADMIN_KEY

    # Upload, then the same file again: reused, not sent twice.
    first = as_json(cli(tmp_path, "models", "upload", "tiny.onnx", "--json"))
    again = as_json(cli(tmp_path, "models", "upload", "tiny.onnx", "--json"))
    assert (first["reused"], again["reused"]) == (False, True)
    assert again["id"] == first["id"]
    expected_sha = hashlib.sha256((tmp_path / "tiny.onnx").read_bytes()).hexdigest()
    assert first["sha256"] == expected_sha

    # The example sweep: 6 jobs, local files reused, waited for, compared in one table.
    sweep = (
        (ROOT / "examples" / "sweep.yaml")
        .read_text()
        .replace("benchmark: {batch_sizes: [1, 16], warmup: 3, iterations: 30}\n", SPEED)
    )
    write_yaml(tmp_path / "sweep.yaml", sweep)
    rows = as_json(cli(tmp_path, "submit", "sweep.yaml", "--wait", "--json", "--timeout", "900"))
    assert len(rows) == 6
    assert all(row["status"] == "succeeded" for row in rows), rows
    assert all(row["summary"]["speedup_p50"].keys() == {"1", "8"} for row in rows)
    labels = {json.dumps(row["labels"], sort_keys=True) for row in rows}
    assert len(labels) == 6
    models = as_json(cli(tmp_path, "models", "list", "--json"))
    assert [m["id"] for m in models] == [first["id"]]  # the spec's tiny.onnx was reused
    assert len(as_json(cli(tmp_path, "datasets", "list", "--json"))) == 1

    batch_id = as_json(cli(tmp_path, "jobs", "show", rows[0]["job_id"], "--json"))["batch_id"]
    compared = as_json(cli(tmp_path, "compare", batch_id, "--json"))
    assert [r["job_id"] for r in compared] == [r["job_id"] for r in rows]
    ranked = [(r["slower"], r["outside_tolerance"]) for r in compared]
    assert ranked == sorted(ranked)  # best first: slower or out-of-tolerance rows last
    table = cli(tmp_path, "compare", batch_id)
    assert table.returncode == (1 if any(r["status"] != "succeeded" for r in rows) else 0)
    assert "speedup b=1" in table.stdout and "speedup b=8" in table.stdout
    assert rows[0]["job_id"] in table.stdout

    # A single job whose drop cannot be within a zero tolerance: exit 4 only when asked.
    strict = write_yaml(
        tmp_path / "strict.yaml",
        "model: tiny.onnx\npasses: [{kind: quantize, method: dynamic}]\n"
        "evaluate: {dataset_id: tiny.npz, metric: fidelity, max_drop: 0.0}\n" + SPEED,
    )
    waited = cli(tmp_path, "submit", str(strict), "--wait", "--fail-on-slower", "--json")
    assert waited.returncode == 4, waited.stderr
    job = json.loads(waited.stdout)
    assert job["status"] == "succeeded" and job["summary"]["within_tolerance"] is False
    assert "outside tolerance" in waited.stderr
    shown = cli(tmp_path, "jobs", "wait", job["id"])
    assert shown.returncode == 0 and "succeeded" in shown.stdout
    assert job["summary"]["verdict"].split(",")[0] in shown.stdout

    # The optimized model in one command, checked against its sha256.
    got = as_json(cli(tmp_path, "download", job["id"], "--to", "out", "--json"))
    path = Path(got["path"])
    assert path.parent == tmp_path / "out"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == got["sha256"]

    # Exit codes a pipeline tells apart.
    bad = write_yaml(
        tmp_path / "bad.yaml", "model: tiny.onnx\npasses: [{kind: quantize, method: int3}]\n"
    )
    refused = cli(tmp_path, "submit", str(bad))
    assert refused.returncode == 5 and "passes" in refused.stderr
    assert cli(tmp_path, "submit", "missing.yaml").returncode == 2
    slow = write_yaml(
        tmp_path / "slow.yaml",
        "model: tiny.onnx\npasses: [{kind: quantize, method: dynamic}]\n"
        "benchmark: {batch_sizes: [256], warmup: 0, iterations: 20000}\n",
    )
    queued = as_json(cli(tmp_path, "submit", str(slow), "--json"))
    assert cli(tmp_path, "jobs", "wait", queued["id"], "--timeout", "0.2").returncode == 3
    as_json(cli(tmp_path, "jobs", "cancel", queued["id"], "--json"))
    canceled = cli(tmp_path, "jobs", "wait", queued["id"], "--json")
    assert canceled.returncode == 1, canceled.stderr
    assert json.loads(canceled.stdout)["status"] == "canceled"
    unreachable = cli(
        tmp_path, "models", "list", "--json", env={"MODELPRESS_URL": "http://127.0.0.1:9"}
    )
    assert unreachable.returncode == 6

    # Admins: a project, a key for it that works, and revoked it no longer does.
    project = as_json(cli(tmp_path, "projects", "create", "team-cli", "--json"))
    key = as_json(
        cli(tmp_path, "keys", "create", "--project", project["id"], "--name", "ci", "--json")
    )
    listed = as_json(cli(tmp_path, "keys", "list", "--project", project["id"], "--json"))
    assert [k["id"] for k in listed] == [key["id"]]
    as_key = {"MODELPRESS_API_KEY": key["key"]}
    assert as_json(cli(tmp_path, "models", "list", "--json", env=as_key)) == []
    as_json(cli(tmp_path, "keys", "revoke", key["id"], "--json"))
    assert cli(tmp_path, "models", "list", "--json", env=as_key).returncode == 5


def test_client_waits_through_an_api_restart_and_resumes_downloads(
    service: Service, tiny: Path, tmp_path: Path
) -> None:
    # No worker until the API is back: the job cannot finish while the API restarts,
    # however fast this machine runs it.
    service.processes["worker"].stop()
    with Client(service.base_url, ADMIN_KEY) as client:
        model = client.upload_model(tiny / "tiny.onnx")
        spec = {
            "model_id": model.id,
            "passes": [{"kind": "quantize", "method": "dynamic"}],
            "benchmark": {"batch_sizes": [256], "warmup": 5, "iterations": 200},
        }
        job = client.submit(spec)
        assert isinstance(job, Job) and job.status == "queued"

    # `modelpress jobs wait` follows the job while the API is stopped and started again.
    env = {"MODELPRESS_URL": service.base_url, "MODELPRESS_API_KEY": ADMIN_KEY}
    waiter = subprocess.Popen(
        [MODELPRESS, "jobs", "wait", job.id, "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={"PATH": os.environ["PATH"], "HOME": str(tmp_path), **env},
    )
    time.sleep(2)
    assert waiter.poll() is None, waiter.communicate()
    with Client(service.base_url, ADMIN_KEY) as client:
        assert not client.get_job(job.id).done
    service.processes["api"].stop()
    time.sleep(3)
    assert waiter.poll() is None  # still waiting, not failed
    api = start("api", [str(BIN / "python"), "-m", "api"], service.env, service.logs)
    service.processes["api"] = api
    service.start_worker()
    stdout, stderr = waiter.communicate(timeout=600)
    assert waiter.returncode == 0, stderr + service.dump_logs()
    assert json.loads(stdout)["status"] == "succeeded"

    with Client(service.base_url, ADMIN_KEY) as client:
        progress: list[float] = []
        done = client.wait(
            job.id, timeout=60, on_change=lambda j: progress.append(j.progress.fraction)
        )
        assert done.succeeded and progress[-1] == 1.0
        assert isinstance(done.summary, JobSummary) and done.summary.size_ratio < 1
        assert done.result and done.result.metrics and done.result.metrics.comparison
        assert done.result.metrics.comparison.size_ratio == done.summary.size_ratio
        assert (
            done.result.metrics.baseline and done.result.metrics.baseline.latency_ms["256"].p50 > 0
        )
        artifact = client.model_artifact(job.id)

        # An interrupted download resumes from its .part file (Range) and is verified whole.
        whole = client.download_artifact(artifact, tmp_path / "whole" / artifact.name)
        content = whole.read_bytes()
        dest = tmp_path / "resumed" / artifact.name
        dest.parent.mkdir()
        Path(str(dest) + ".part").write_bytes(content[: len(content) // 2])
        sizes: list[int] = []
        client.download_artifact(artifact, dest, progress=lambda done, total: sizes.append(done))
        assert dest.read_bytes() == content
        assert sizes[0] > len(content) // 2  # only the rest came over the wire

        # A corrupt partial file is caught by the checksum, not kept.
        corrupt = tmp_path / "corrupt" / artifact.name
        corrupt.parent.mkdir()
        Path(str(corrupt) + ".part").write_bytes(b"\0" * (len(content) // 2))
        with pytest.raises(ChecksumMismatch):
            client.download_artifact(artifact, corrupt)
        assert not corrupt.exists() and not Path(str(corrupt) + ".part").exists()
        assert client.download_artifact(artifact, corrupt).read_bytes() == content


class DropFirstAnswer:
    """A proxy that passes requests to the API, but for the first job creation drops the
    connection after the API answered: the client never learns that its job was created."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.removeprefix("http://").split(":")
        self.upstream = (host, int(port))
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        self.dropped = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            length = 0
            lines = head.split(b"\r\n")
            for line in lines[1:]:
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            while len(body) < length:
                body += conn.recv(65536)
            kept = [line for line in lines if not line.lower().startswith(b"connection:")]
            request = b"\r\n".join([*kept, b"Connection: close"]) + b"\r\n\r\n" + body
            with socket.create_connection(self.upstream) as up:
                up.sendall(request)
                answer = b""
                while chunk := up.recv(65536):
                    answer += chunk
            if lines[0].startswith(b"POST /v1/jobs ") and self.dropped == 0:
                self.dropped += 1
                conn.shutdown(socket.SHUT_RDWR)  # the answer is lost on the way back
                return
            conn.sendall(answer)

    def close(self) -> None:
        self.server.close()


def test_a_create_retried_after_a_lost_answer_is_one_job(service: Service, tiny: Path) -> None:
    proxy = DropFirstAnswer(service.base_url)
    try:
        with Client(proxy.url, ADMIN_KEY, backoff=0.1) as client:
            model = client.upload_model(tiny / "tiny.onnx")
            spec = {
                "model_id": model.id,
                "passes": [{"kind": "quantize", "method": "fp16"}],
                "labels": {"test": "lost answer"},
            }
            job = client.submit(spec)
            assert proxy.dropped == 1
            same = [
                j
                for j in client.list_jobs(model_id=model.id)
                if (j.labels or {}).get("test") == "lost answer"
            ]
            assert [j.id for j in same] == [job.id]
            # Run to its end, so the next test finds the worker free. Not canceled: an fp16
            # pass on this model may end before the cancel arrives.
            assert client.wait(job.id, timeout=120, poll_interval=0.2).status == "succeeded"
    finally:
        proxy.close()


def test_the_cli_says_why_a_job_waits_and_which_workers_serve(
    service: Service, tiny: Path, tmp_path: Path
) -> None:
    env = {"MODELPRESS_URL": service.base_url, "MODELPRESS_API_KEY": ADMIN_KEY}
    with Client(service.base_url, ADMIN_KEY) as client:
        model = client.upload_model(tiny / "tiny.onnx")
        # This machine has no GPU: the service's worker refused the gpu queue at its start.
        job = client.submit(
            {
                "model_id": model.id,
                "passes": [{"kind": "quantize", "method": "dynamic"}],
                "benchmark": {"device": "cuda"},
            }
        )
        assert job.waiting_for is not None and job.waiting_for.queue == "gpu"
        try:
            shown = cli(tmp_path, "jobs", "show", job.id, env=env)
            assert shown.returncode == 0, shown.stderr
            assert "waiting: no live worker serves the 'gpu' queue" in shown.stdout
            listed = cli(tmp_path, "jobs", "list", env=env)
            assert "waiting for a gpu worker" in listed.stdout
            events = cli(tmp_path, "jobs", "events", job.id, "--timeout", "2", env=env)
            assert "no live worker serves the 'gpu' queue" in events.stdout

            # Live ones only: other tests of this session stop and start workers, which stay
            # listed a while as stopped or dead.
            listed_workers = as_json(cli(tmp_path, "workers", "--json", env=env))
            (worker,) = [w for w in listed_workers if w["state"] == "live"]
            assert worker["queues"] == ["cpu"] and "gpu" in worker["refused"]
            table = cli(tmp_path, "workers", env=env)
            assert "CUDAExecutionProvider" in table.stdout
        finally:
            client.cancel_job(job.id)


def test_tables_keep_ids_whole_on_a_narrow_terminal_and_unwrapped_in_a_pipe(
    service: Service, tiny: Path, tmp_path: Path
) -> None:
    shutil.copy(tiny / "tiny.onnx", tmp_path / "tiny.onnx")
    env = {"MODELPRESS_URL": service.base_url, "MODELPRESS_API_KEY": ADMIN_KEY}
    sweep = write_yaml(
        tmp_path / "sweep.yaml",
        "name: two per-channel settings\nmodel: tiny.onnx\n"
        "passes: [{kind: quantize, method: dynamic}]\n"
        "benchmark: {batch_sizes: [1], warmup: 0, iterations: 2}\n"
        "matrix: {passes.0.per_channel: [true, false]}\n",
    )
    batch = as_json(cli(tmp_path, "submit", str(sweep), "--json", env=env))
    batch_id, jobs = batch["id"], batch["jobs"]
    try:
        # An 80-column terminal: each id stays whole, to be copied into the next command.
        batches = cli(tmp_path, "batches", "list", env=env, columns="80")
        assert batches.returncode == 0, batches.stderr
        assert batch_id in batches.stdout, batches.stdout
        assert "…" not in batches.stdout  # nothing cut, a long word wraps
        listed = cli(tmp_path, "jobs", "list", "--batch", batch_id, env=env, columns="80")
        assert all(job["id"] in listed.stdout for job in jobs), listed.stdout
        assert max(len(line) for line in listed.stdout.splitlines()) <= 80

        # A pipe with no COLUMNS (a CI log, `| grep`): one line per job, cells unwrapped.
        listed = cli(tmp_path, "jobs", "list", "--batch", batch_id, env=env, columns=None)
        rows = [line for line in listed.stdout.splitlines() if "job_" in line]
        assert len(rows) == 2 and all("per_channel=" in row for row in rows), listed.stdout
        as_rows = as_json(cli(tmp_path, "batches", "list", "--json", env=env))
        assert as_rows[0]["id"] == batch_id and as_rows[0]["total"] == 2
        assert "jobs" not in as_rows[0]

        # Every command says what it does in its group's help, each on its own lines.
        helped = cli(tmp_path, "batches", "--help", env=env)
        assert "Refused (exit 5) while any of its jobs is unfinished" in helped.stdout
        for command in ("list", "show", "cancel"):
            (line,) = [x for x in helped.stdout.splitlines() if x.startswith(f"│ {command} ")]
            assert line.removeprefix(f"│ {command} ").strip(" │"), helped.stdout
    finally:
        as_json(cli(tmp_path, "batches", "cancel", batch_id, "--json", env=env))
