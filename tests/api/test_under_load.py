"""The API against a real uvicorn process, under the loads that could starve it: bodies sent
by callers without a key, hundreds of open event streams, a write stuck on a locked
database. Every other request must still get its right answer."""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import ADMIN_KEY
from tests.integration.processes import Service, run_service
from tests.models.onnx_basic import make_mlp

pytestmark = pytest.mark.slow

STREAMS = 200
AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
#: 10 GiB: a body no test sends, and no server could read before the client gives up.
ENORMOUS = 10 * 1024**3


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    env = {
        # The defaults a deployment runs with, except that streams stay open for the test.
        "MODELPRESS_EVENTS_POLL_S": "1",
        "MODELPRESS_EVENTS_STREAM_S": "300",
    }
    yield from run_service(tmp_path_factory.mktemp("api-under-load"), None, env, with_worker=False)


@pytest.fixture(scope="module")
def queued_job(api: Service, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A job that stays queued (no worker runs here), so its event stream stays open."""
    path = make_mlp(tmp_path_factory.mktemp("model") / "m.onnx")
    with api.client() as client:
        with path.open("rb") as handle:
            model = client.post("/v1/models", files={"file": ("m.onnx", handle)})
        assert model.status_code == 201, model.text
        spec = {
            "model_id": model.json()["id"],
            "passes": [{"kind": "quantize", "method": "dynamic"}],
        }
        job = client.post("/v1/jobs", json=spec)
        assert job.status_code == 202, job.text
        return dict(job.json())


def _raw_exchange(api: Service, head: str, body_start: bytes) -> tuple[bytes, bool]:
    """Sends a request head and the start of its body, then only reads: returns the answer
    and whether the server then closed the connection (rather than wait for the rest)."""
    address = urlsplit(api.base_url)
    with socket.create_connection((address.hostname, address.port), timeout=30) as sock:
        sock.sendall(head.encode() + body_start)
        received = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                return received, False
            if not chunk:
                return received, True
            received += chunk


@pytest.mark.parametrize(
    "credentials", ["", "Authorization: Bearer mpk_unknownkeyunknownkeyunknownkey00\r\n"]
)
@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_a_caller_without_a_key_gets_401_before_its_body_is_read(
    api: Service, credentials: str, framing: str
) -> None:
    if framing == "length":
        head_framing, body = f"Content-Length: {ENORMOUS}\r\n", b'{"model_id": "' + b"x" * 65536
    else:
        head_framing, body = "Transfer-Encoding: chunked\r\n", b"10000\r\n" + b"x" * 65536
    head = (
        "POST /v1/jobs HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        f"{credentials}{head_framing}\r\n"
    )
    answer, closed = _raw_exchange(api, head, body)
    # Without the guard the server would wait for the other 10 GiB: no answer at all.
    assert answer.startswith(b"HTTP/1.1 401 "), answer[:300]
    assert b"application/problem+json" in answer
    assert closed, "the server kept the connection open to read the rest of the body"


def test_a_body_declared_over_the_limit_is_413_before_it_is_read(api: Service) -> None:
    head = (
        "POST /v1/batches HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {ADMIN_KEY}\r\nContent-Length: {ENORMOUS}\r\n\r\n"
    )
    answer, closed = _raw_exchange(api, head, b'{"jobs": [' + b" " * 65536)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:300]
    assert b"MODELPRESS_MAX_JSON_BODY_BYTES" in answer
    assert closed


def test_a_content_length_of_thousands_of_digits_is_4xx(api: Service) -> None:
    for credentials in ("", f"Authorization: Bearer {ADMIN_KEY}\r\n"):
        head = (
            "POST /v1/jobs HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            f"{credentials}Content-Length: {'9' * 5000}\r\n\r\n"
        )
        answer, _ = _raw_exchange(api, head, b"{}")
        assert answer.startswith(b"HTTP/1.1 400 "), answer[:300]


async def _open_stream(
    client: httpx.AsyncClient, job_id: str, first_event: asyncio.Event, ended: list[str]
) -> None:
    async with client.stream("GET", f"/v1/jobs/{job_id}/events") as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line == "event: job":
                first_event.set()
    ended.append(job_id)


async def _other_routes_while_streams_are_open(api: Service, job: dict[str, Any]) -> None:
    limits = httpx.Limits(max_connections=STREAMS + 10, max_keepalive_connections=0)
    timeout = httpx.Timeout(120)
    ended: list[str] = []
    async with httpx.AsyncClient(
        base_url=api.base_url, headers=AUTH, limits=limits, timeout=timeout
    ) as streams:
        firsts = [asyncio.Event() for _ in range(STREAMS)]
        tasks = [
            asyncio.create_task(_open_stream(streams, job["id"], first, ended)) for first in firsts
        ]
        try:
            # Each stream has its first event: all of them are open at once. A stream that
            # held a worker thread while it waited would leave the later ones without one.
            await asyncio.wait_for(asyncio.gather(*(f.wait() for f in firsts)), timeout=120)
            async with httpx.AsyncClient(
                base_url=api.base_url, headers=AUTH, timeout=timeout
            ) as client:
                # More requests at once than the database pool has connections (15): each
                # needs one, so streams that held theirs would leave these waiting, then 500.
                answers = await asyncio.gather(
                    *(client.get(f"/v1/jobs/{job['id']}") for _ in range(20)),
                    client.get("/v1/jobs", params={"status": "queued"}),
                    client.get("/v1/models"),
                    client.post("/v1/jobs", json=job["spec"]),
                    client.get("/readyz"),
                    client.get("/healthz"),
                )
            assert ended == [], "event streams ended while the other requests ran"
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    *gets, listed, models, created, ready, health = answers
    assert [r.status_code for r in gets] == [200] * 20
    assert {r.json()["id"] for r in gets} == {job["id"]}
    assert listed.status_code == 200 and job["id"] in {j["id"] for j in listed.json()["items"]}
    assert models.status_code == 200 and job["model_id"] in {
        m["id"] for m in models.json()["items"]
    }
    assert created.status_code == 202, created.text
    assert ready.status_code == 200, ready.text
    assert health.json() == {"status": "ok"}


def test_200_open_event_streams_leave_every_other_route_answering(
    api: Service, queued_job: dict[str, Any]
) -> None:
    asyncio.run(_other_routes_while_streams_are_open(api, queued_job))


def test_health_answers_while_an_upload_waits_for_a_locked_database(
    api: Service, tmp_path: Path
) -> None:
    """An upload's row is written in a worker thread: while that write waits for a lock,
    the event loop still serves other requests."""
    model = make_mlp(tmp_path / "m.onnx")
    lock = sqlite3.connect(
        Path(api.env["MODELPRESS_DATA_DIR"]) / "modelpress.db", check_same_thread=False
    )
    lock.execute("BEGIN IMMEDIATE")  # holds the write lock until released below
    released = threading.Event()

    def release() -> None:
        if not released.is_set():
            released.set()
            lock.rollback()

    # However the test goes, the lock goes well before SQLite's 30 s busy timeout.
    timer = threading.Timer(20, release)
    timer.start()

    def upload() -> httpx.Response:
        with api.client() as client, model.open("rb") as handle:
            return client.post("/v1/models", files={"file": ("m.onnx", handle)})

    try:
        with ThreadPoolExecutor(1) as pool:
            pending: Future[httpx.Response] = pool.submit(upload)
            answered_while_locked = []
            with httpx.Client(base_url=api.base_url, timeout=60) as client:
                for _ in range(10):
                    time.sleep(0.3)
                    health = client.get("/healthz")
                    assert health.json() == {"status": "ok"}
                    answered_while_locked.append(not released.is_set())
            upload_was_waiting = not pending.done()
            release()
            uploaded = pending.result(timeout=60)
    finally:
        timer.cancel()
        release()
        lock.close()
    assert answered_while_locked == [True] * 10, "/healthz waited for the database lock"
    assert upload_was_waiting
    assert uploaded.status_code == 201, uploaded.text
