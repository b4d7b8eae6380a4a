"""Uploads against a real uvicorn API process: a 413 that arrives while the body is still
being sent, and an API killed in the middle of an upload."""

from __future__ import annotations

import os
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from core.migrate import upgrade
from tests.conftest import ADMIN_KEY
from tests.integration.processes import BIN, Process, start, wait_until
from tests.ports import free_port

pytestmark = pytest.mark.slow

MAX_UPLOAD_BYTES = 1024 * 1024
BOUNDARY = "modelpress-test-boundary"


class Api:
    """One API process (no worker) on its own data folder; it can be killed and restarted."""

    def __init__(self, tmp_path: Path) -> None:
        self.data_dir = tmp_path / "data"
        self.data_dir.mkdir()
        upgrade(f"sqlite:///{self.data_dir / 'modelpress.db'}")
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.logs = tmp_path
        self.env = {
            **os.environ,
            "MODELPRESS_DATA_DIR": str(self.data_dir),
            "MODELPRESS_PORT": str(self.port),
            "MODELPRESS_BOOTSTRAP_KEY": ADMIN_KEY,
            "MODELPRESS_MAX_UPLOAD_BYTES": str(MAX_UPLOAD_BYTES),
            "PYTHONUNBUFFERED": "1",
        }
        self.env.pop("MODELPRESS_DATABASE_URL", None)
        self.env.pop("MODELPRESS_STORAGE_URL", None)
        self.process: Process | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        self.process = start(
            f"api-{self.starts}", [str(BIN / "python"), "-m", "api"], self.env, self.logs
        )
        wait_until(lambda: httpx.get(f"{self.base_url}/healthz").status_code == 200, 180, "API")

    def kill(self) -> None:
        assert self.process is not None
        self.process.stop(signal.SIGKILL)

    @property
    def tmp_dir(self) -> Path:
        return self.data_dir / "tmp"

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.base_url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=30
        )


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    server = Api(tmp_path_factory.mktemp("upload-faults"))
    server.start()
    try:
        yield server
    finally:
        if server.process is not None:
            if server.process.popen.poll() is None:
                server.process.stop()
            print(server.process.output()[-4000:])


def _multipart_head(filename: str) -> bytes:
    return (
        f"--{BOUNDARY}\r\n"
        f'Content-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def test_oversized_upload_is_refused_while_it_streams(api: Api) -> None:
    """The 413 comes back while the client is still sending: the server does not read (or
    store) the rest of an upload that is already too large. No Content-Length is sent, so
    the size is only known from the bytes as they arrive."""
    with socket.create_connection(("127.0.0.1", api.port), timeout=30) as sock:
        sock.sendall(
            (
                "POST /v1/models HTTP/1.1\r\n"
                f"Host: 127.0.0.1:{api.port}\r\n"
                f"Authorization: Bearer {ADMIN_KEY}\r\n"
                f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
                "Transfer-Encoding: chunked\r\n\r\n"
            ).encode()
        )
        sock.sendall(_chunk(_multipart_head("big.onnx")))
        block = b"\0" * (64 * 1024)
        for _ in range(MAX_UPLOAD_BYTES // len(block) + 1):
            sock.sendall(_chunk(block))
        # The body is unfinished (no closing boundary, no last chunk); the answer must come
        # anyway.
        received = b""
        while b"\r\n\r\n" not in received:
            data = sock.recv(65536)
            assert data, f"the connection closed without an answer: {received!r}"
            received += data
        response = received.decode("latin-1")
    assert response.startswith("HTTP/1.1 413"), response[:300]
    assert "application/problem+json" in response
    with api.client() as client:
        assert client.get("/v1/models").json()["items"] == []
    assert list(api.tmp_dir.glob("upload-*")) == []


def test_api_killed_during_an_upload_leaves_no_model_and_no_temp_file(api: Api) -> None:
    sent = threading.Event()
    release = threading.Event()

    def body() -> Iterator[bytes]:
        yield _multipart_head("slow.onnx")
        yield b"\x08" * 200_000
        sent.set()
        release.wait(60)  # hold the upload open until the API is dead
        yield b"\x08" * 1000

    errors: list[BaseException] = []

    def upload() -> None:
        try:
            with api.client() as client:
                client.post(
                    "/v1/models",
                    content=body(),
                    headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
                )
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=upload, daemon=True)
    thread.start()
    assert sent.wait(30)
    wait_until(
        lambda: any(p.stat().st_size > 0 for p in api.tmp_dir.glob("upload-*.part")),
        30,
        "the upload's temp file",
    )
    api.kill()
    release.set()
    thread.join(30)
    assert errors, "the upload should fail when the API dies"
    leftovers = list(api.tmp_dir.glob("upload-*.part"))
    assert leftovers  # what the killed process left for the next start to remove

    api.start()
    with api.client() as client:
        assert client.get("/v1/models").json()["items"] == []
    assert list(api.tmp_dir.glob("upload-*")) == []
    # The restarted API still takes uploads.
    with api.client() as client:
        response = client.post("/v1/models", files={"file": ("empty.onnx", b"")})
    assert response.status_code == 422
    assert list(api.tmp_dir.glob("upload-*")) == []


def test_sweep_leaves_uploads_of_live_processes_alone(tmp_path: Path) -> None:
    """Several API processes may share a data folder: the start-up sweep of one must not
    remove the temp file of an upload that another is still receiving or inspecting."""
    from api.uploads import _create_locked_part, sweep_stale_uploads

    live_fd, live = _create_locked_part(tmp_path)
    dead_fd, dead = _create_locked_part(tmp_path)
    (tmp_path / f"{dead.name}.d").mkdir()
    os.close(dead_fd)  # what the death of its process does to the lock
    try:
        assert sweep_stale_uploads(tmp_path) == 1
        assert live.exists()
        assert not dead.exists() and not (tmp_path / f"{dead.name}.d").exists()
    finally:
        os.close(live_fd)
    assert sweep_stale_uploads(tmp_path) == 1
    assert list(tmp_path.iterdir()) == []
