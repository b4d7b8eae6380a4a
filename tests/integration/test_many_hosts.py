"""Workers on two machines that share only the database, the broker and the object store.

Each worker "host" runs in a network namespace of its own (tests/integration/netns.py) with
its own host name and data folder; the shared PostgreSQL, Redis and S3 server listen only on
the test network's address, and the API runs in this namespace. Jobs spread over both hosts,
every artifact is downloadable from the API, and a host killed mid-job loses the job to the
other host, where it succeeds.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from moto.server import ThreadedMotoServer

from core.migrate import upgrade
from tests.conftest import ADMIN_KEY, make_bucket
from tests.integration import netns
from tests.integration.processes import BIN, Process, Service, start, start_redis, wait_until
from tests.integration.test_end_to_end import upload, wait_for_job, wait_for_stage
from tests.models.onnx_basic import make_mlp
from tests.ports import free_port
from tests.postgres import run_postgres

# Two worker start-ups (each imports torch twice: the worker and its job host) and a job
# that runs again after the heartbeat timeout.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

HOSTS = ("host-a", "host-b")
#: Long enough that a busy machine's stalls are never taken for a dead worker, short enough
#: for a test.
HEARTBEAT_TIMEOUT_S = 15
QUICK_BENCHMARK = {"batch_sizes": [1], "warmup": 1, "iterations": 5, "threads": 1}
#: Seconds of benchmark runs (tens on a busy machine): the job is still running when its host
#: is killed, and its second attempt does not take long.
LONG_BENCHMARK = {"batch_sizes": [1], "warmup": 1, "iterations": 20_000, "threads": 1}
_PROXY_VARIABLES = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}


@dataclass
class SharedServices:
    """PostgreSQL, Redis and S3, reachable only on the test network's service address."""

    address: str
    database_url: str
    broker_url: str
    s3_endpoint: str
    bucket: str
    ports: dict[str, int]

    def env(self) -> dict[str, str]:
        return {
            "MODELPRESS_DATABASE_URL": self.database_url,
            "MODELPRESS_BROKER_URL": self.broker_url,
            "MODELPRESS_STORAGE_URL": f"s3://{self.bucket}/modelpress",
            "MODELPRESS_S3_ENDPOINT_URL": self.s3_endpoint,
            "MODELPRESS_S3_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
        }


@dataclass
class Cluster:
    network: netns.TestNetwork
    services: SharedServices
    #: The API and both hosts' workers; dump_logs() shows them all.
    service: Service
    #: Each machine's own data folder: the API's and each host's.
    data_dirs: dict[str, Path]

    def worker(self, host: str) -> Process:
        return self.service.processes[host]


def _clean_env() -> dict[str, str]:
    """This process's environment without the service's settings or proxies: each process
    of the test gets exactly the settings it is given."""
    return {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("MODELPRESS_") and name.lower() not in _PROXY_VARIABLES
    }


@pytest.fixture(scope="module")
def network() -> Iterator[netns.TestNetwork]:
    try:
        made = netns.create(list(HOSTS))
    except netns.NetworkUnavailable as exc:
        pytest.skip(f"no test network of namespaces: {exc}")
    try:
        yield made
    finally:
        made.close()


@pytest.fixture(scope="module")
def services(
    network: netns.TestNetwork, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SharedServices]:
    address = network.service_address
    ports = {name: free_port(address) for name in ("postgres", "redis", "s3")}
    postgres = run_postgres(ports["postgres"], host=address, trusted_network=str(network.subnet))
    server_url = next(postgres)
    redis = None
    s3 = None
    try:
        redis = start_redis(tmp_path_factory.mktemp("hosts-redis"), ports["redis"], host=address)
        s3 = ThreadedMotoServer(ip_address=address, port=ports["s3"], verbose=False)
        s3.start()
        s3_endpoint = f"http://{address}:{ports['s3']}"
        upgrade(server_url)
        yield SharedServices(
            address=address,
            database_url=server_url,
            broker_url=f"redis://{address}:{ports['redis']}/0",
            s3_endpoint=s3_endpoint,
            bucket=make_bucket(s3_endpoint),
            ports=ports,
        )
    finally:
        if s3 is not None:
            s3.stop()
        if redis is not None:
            redis.stop()
        postgres.close()


def _start_host(
    host: netns.Host, *, shared_env: dict[str, str], data_dir: Path, logs: Path
) -> Process:
    env = {
        **shared_env,
        "MODELPRESS_DATA_DIR": str(data_dir),
        "MODELPRESS_HEARTBEAT_INTERVAL_S": "0.5",
        "MODELPRESS_HEARTBEAT_TIMEOUT_S": str(HEARTBEAT_TIMEOUT_S),
        "MODELPRESS_REAPER_INTERVAL_S": "0.5",
    }
    celery = [
        str(BIN / "celery"),
        "-A",
        "worker.celery_app",
        "worker",
        "-Q",
        "cpu",
        "--loglevel",
        "INFO",
        "-n",
        f"{host.name}@%h",
    ]
    return start(host.name, host.exec_argv(celery, hostname=host.name), env, logs)


@pytest.fixture(scope="module")
def cluster(
    network: netns.TestNetwork,
    services: SharedServices,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("hosts")
    shared = {**_clean_env(), **services.env(), "PYTHONUNBUFFERED": "1"}
    port = free_port()
    data_dirs = {name: root / f"{name}-data" for name in ("api", *HOSTS)}
    api_env = {
        **shared,
        "MODELPRESS_DATA_DIR": str(data_dirs["api"]),
        "MODELPRESS_PORT": str(port),
        "MODELPRESS_BOOTSTRAP_KEY": ADMIN_KEY,
        "MODELPRESS_EVENTS_POLL_S": "0.1",
    }
    service = Service(base_url=f"http://127.0.0.1:{port}", env=api_env, logs=root)
    try:
        service.processes["api"] = start("api", [str(BIN / "python"), "-m", "api"], api_env, root)
        for name in HOSTS:
            service.processes[name] = _start_host(
                network.host(name), shared_env=shared, data_dir=data_dirs[name], logs=root
            )
        wait_until(lambda: httpx.get(f"{service.base_url}/healthz").status_code == 200, 180, "API")
        for name in HOSTS:
            proc = service.processes[name]
            wait_until(
                lambda proc=proc: "ready." in proc.output() or proc.popen.poll() is not None,
                240,  # the worker and its job host import torch: slow on a small machine
                f"{name} to be ready",
            )
            assert proc.popen.poll() is None, f"{name} exited:\n{proc.output()}"
        yield Cluster(network=network, services=services, service=service, data_dirs=data_dirs)
    except BaseException:
        print(service.dump_logs())
        raise
    finally:
        for proc in service.processes.values():
            proc.stop()


def _connect_here(address: str, port: int) -> str:
    try:
        socket.create_connection((address, port), 3).close()
    except OSError as exc:
        return type(exc).__name__
    return "connected"


def test_each_host_reaches_the_shared_services_and_nothing_else(
    network: netns.TestNetwork, services: SharedServices
) -> None:
    host_a, host_b = network.host("host-a"), network.host("host-b")
    for name, port in services.ports.items():
        assert network.connect_from(host_a, services.address, port) == "connected", name
        assert network.connect_from(host_b, services.address, port) == "connected", name
        # Not on every address of this machine: its loopback does not answer.
        assert _connect_here("127.0.0.1", port) == "ConnectionRefusedError", name

    # Something listens on host-b's address: this namespace reaches it through the bridge,
    # host-a (a port of the same bridge) does not.
    listener = subprocess.Popen(
        host_b.exec_argv(
            [
                sys.executable,
                "-c",
                "import socket, sys\n"
                f"s = socket.create_server(({host_b.address!r}, 7000))\n"
                "print('listening', flush=True)\n"
                "while True: s.accept()[0].close()\n",
            ]
        ),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert listener.stdout is not None and listener.stdout.readline().strip() == "listening"
        assert _connect_here(host_b.address, 7000) == "connected"
        assert network.connect_from(host_a, host_b.address, 7000) != "connected"
    finally:
        listener.kill()
        listener.wait()

    # No route beyond the test subnet: not to this machine's other addresses, nor out.
    routes = subprocess.run(
        ["ip", "-n", host_a.namespace, "-4", "route", "show"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert [line.split()[0] for line in routes] == [str(network.subnet)]
    outside = network.route_from(host_a, "1.1.1.1")
    assert outside.returncode != 0 and "unreachable" in outside.stderr


def _still_running(processes: list[psutil.Process]) -> list[psutil.Process]:
    """Those not yet ended (a zombie has ended: it waits only for its parent to read it)."""
    running = []
    for process in processes:
        try:
            if process.status() != psutil.STATUS_ZOMBIE:
                running.append(process)
        except psutil.NoSuchProcess:
            pass
    return running


def _host_of(job: dict[str, Any]) -> str:
    """The host name in the job's `worker` ("host:pid")."""
    worker = job["worker"]
    assert worker, job
    return str(worker).rsplit(":", 1)[0]


def _assert_artifacts_downloadable(client: httpx.Client, job_id: str) -> int:
    artifacts = client.get(f"/v1/jobs/{job_id}/artifacts").json()
    assert {a["kind"] for a in artifacts} >= {"model", "report"}, artifacts
    for artifact in artifacts:
        content = client.get(f"/v1/artifacts/{artifact['id']}/content")
        assert content.status_code == 200, (artifact, content.text)
        assert hashlib.sha256(content.content).hexdigest() == artifact["sha256"]
        assert len(content.content) == artifact["size_bytes"]
    report = client.get(f"/v1/jobs/{job_id}/report")
    assert report.status_code == 200 and report.json()["metrics"]
    return len(artifacts)


def _stored_files(data_dir: Path) -> list[Path]:
    storage = data_dir / "storage"
    return [p for p in storage.rglob("*") if p.is_file()] if storage.exists() else []


def test_jobs_spread_over_two_hosts_and_move_off_a_killed_one(
    cluster: Cluster, tmp_path: Path
) -> None:
    service = cluster.service
    with service.client() as client:
        quick_model = upload(client, "/v1/models", make_mlp(tmp_path / "quick.onnx"))
        long_model = upload(
            client,
            "/v1/models",
            make_mlp(tmp_path / "long.onnx", in_features=256, hidden=1024, classes=10),
        )

        # Each worker holds one job at a time (prefetch 1, late acks), so jobs sent together
        # land on both hosts.
        quick_ids = []
        for _ in range(4):
            spec = {
                "model_id": quick_model["id"],
                "passes": [{"kind": "quantize", "method": "dynamic"}],
                "benchmark": QUICK_BENCHMARK,
            }
            created = client.post("/v1/jobs", json=spec)
            assert created.status_code == 202, created.text
            quick_ids.append(created.json()["id"])
        quick_jobs = [
            wait_for_job(service, client, job_id, {"succeeded", "failed"}, 240)
            for job_id in quick_ids
        ]
        for job in quick_jobs:
            assert job["status"] == "succeeded", (job["error"], service.dump_logs())
            assert job["attempts"] == 1
        assert {_host_of(job) for job in quick_jobs} == set(HOSTS)
        # The API has a data folder of its own: what it serves came through the object store.
        for job in quick_jobs:
            assert _assert_artifacts_downloadable(client, job["id"]) >= 2

        # A long job; its host dies mid-job (the worker, its pool and its job processes at
        # once), and the other host's reaper gives it to the other host.
        spec = {
            "model_id": long_model["id"],
            "passes": [{"kind": "quantize", "method": "dynamic"}],
            "benchmark": LONG_BENCHMARK,
        }
        created = client.post("/v1/jobs", json=spec)
        assert created.status_code == 202, created.text
        long_id = created.json()["id"]
        wait_for_stage(service, client, long_id, "benchmarking")
        running = client.get(f"/v1/jobs/{long_id}").json()
        assert running["status"] == "running" and running["attempts"] == 1
        lost_host = _host_of(running)
        (survivor,) = set(HOSTS) - {lost_host}
        # The worker, its pool process, the job host and the job's process, at least.
        processes = psutil.Process(cluster.worker(lost_host).popen.pid).children(recursive=True)
        assert len(processes) >= 3, processes
        cluster.worker(lost_host).stop(signal.SIGKILL)
        assert client.get(f"/v1/jobs/{long_id}").json()["status"] == "running"
        # Nothing of the dead host works on: its job must not run twice.
        wait_until(lambda: not _still_running(processes), 15, "the dead host's processes to end")

        done = wait_for_job(
            service, client, long_id, {"succeeded", "failed"}, HEARTBEAT_TIMEOUT_S + 300
        )
        assert done["status"] == "succeeded", (done["error"], service.dump_logs())
        assert done["attempts"] == 2
        assert _host_of(done) == survivor
        assert _assert_artifacts_downloadable(client, long_id) >= 2
        assert cluster.worker(survivor).popen.poll() is None

    # Nothing was kept on any machine's local disk.
    for name, data_dir in cluster.data_dirs.items():
        assert _stored_files(data_dir) == [], name
