"""Start and stop the service's real processes (API server, Celery worker, redis-server)
for integration tests and benchmarks."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from core.migrate import upgrade
from tests.conftest import ADMIN_KEY
from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def wait_until(check, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def start(name: str, args: list[str], env: dict[str, str], logs: Path) -> Process:
    log = logs / f"{name}.log"
    handle = log.open("wb")
    popen = subprocess.Popen(
        args, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
    )
    return Process(name, popen, log)


@dataclass
class Service:
    """An API server and a worker sharing one data folder, database and broker."""

    base_url: str
    env: dict[str, str]
    logs: Path
    processes: dict[str, Process] = field(default_factory=dict)

    def client(self) -> httpx.Client:
        # A new connection per request: the server closes a kept-alive connection after 5 idle
        # seconds, and a test process stalled that long on a busy machine would otherwise send
        # its next request into a connection the server is closing.
        return httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
            timeout=30,
            limits=httpx.Limits(max_keepalive_connections=0),
        )

    def worker_command(self, name: str, queues: str) -> list[str]:
        return [
            str(BIN / "celery"),
            "-A",
            "worker.celery_app",
            "worker",
            "-Q",
            queues,
            "--loglevel",
            "INFO",
            "-n",
            f"{name}@%h",
        ]

    def start_worker(
        self, name: str = "worker", *, queues: str = "cpu,gpu", env: dict[str, str] | None = None
    ) -> Process:
        command = self.worker_command(name, queues)
        proc = start(name, command, {**self.env, **(env or {})}, self.logs)
        self.processes[name] = proc
        wait_until(
            lambda: "ready." in proc.output() or proc.popen.poll() is not None,
            240,  # the worker preloads torch: slow on a small machine
            f"{name} to be ready",
        )
        if proc.popen.poll() is not None:
            raise RuntimeError(f"{name} exited:\n{proc.output()}")
        return proc

    def dump_logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.output()[-4000:]}" for p in self.processes.values())


def run_service(
    tmp_path: Path,
    broker_url: str | None,
    extra_env: dict[str, str] | None = None,
    *,
    with_worker: bool = True,
) -> Iterator[Service]:
    data_dir = tmp_path / "data"
    port = free_port()
    env = {
        **os.environ,
        "MODELPRESS_DATA_DIR": str(data_dir),
        "MODELPRESS_PORT": str(port),
        "MODELPRESS_BOOTSTRAP_KEY": ADMIN_KEY,
        "MODELPRESS_HEARTBEAT_INTERVAL_S": "0.5",
        # Often enough that a job's event stream shows even its short stages.
        "MODELPRESS_EVENTS_POLL_S": "0.1",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("MODELPRESS_DATABASE_URL", None)
    env.update(extra_env or {})
    if broker_url:
        env["MODELPRESS_BROKER_URL"] = broker_url
    else:
        env.pop("MODELPRESS_BROKER_URL", None)
    data_dir.mkdir(parents=True)
    upgrade(f"sqlite:///{data_dir / 'modelpress.db'}")
    service = Service(base_url=f"http://127.0.0.1:{port}", env=env, logs=tmp_path)
    api = start("api", [str(BIN / "python"), "-m", "api"], env, tmp_path)
    service.processes["api"] = api
    try:
        wait_until(lambda: httpx.get(f"{service.base_url}/healthz").status_code == 200, 180, "API")
        if with_worker:
            service.start_worker()
        yield service
    except BaseException:
        print(service.dump_logs())
        raise
    finally:
        for proc in service.processes.values():
            proc.stop()


def start_redis(tmp_path: Path, port: int, *, host: str = "127.0.0.1") -> Process:
    """A redis-server on host:port that keeps nothing on disk: stopped, it forgets every
    message."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed: run `make system-packages`")
    proc = start(
        f"redis-{port}",
        [
            binary,
            "--port",
            str(port),
            "--bind",
            host,
            # Without a password Redis answers only loopback clients unless told otherwise;
            # another address is a private test network (tests/integration/netns.py).
            "--protected-mode",
            "yes" if host == "127.0.0.1" else "no",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        dict(os.environ),
        tmp_path,
    )
    try:
        wait_until(lambda: socket.create_connection((host, port), 0.2), 10, "redis-server")
    except BaseException:
        proc.stop()
        raise
    return proc


def run_redis(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    proc = start_redis(tmp_path, port)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.stop()
