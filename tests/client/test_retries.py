"""The client's retries against a small real HTTP server that answers 429 and 503 first (the
service itself sends no 429 today, so a stand-in server plays the busy service)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from modelpress import ApiError, Client

JOB = {"id": "job_1", "status": "queued"}
PAGE: dict[str, Any] = {"items": [], "next_page_token": None}


class Busy:
    """Answers each path's requests from a script of (status, headers, body), then 200s."""

    def __init__(self, script: dict[str, list[tuple[int, dict[str, str], Any]]]) -> None:
        self.script = script
        self.seen: list[tuple[float, str, str, dict[str, str]]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                self.rfile.read(length)
                path = self.path.split("?")[0]
                outer.seen.append((time.monotonic(), self.command, path, dict(self.headers)))
                steps = outer.script.get(path) or []
                status, headers, body = steps.pop(0) if steps else (200, {}, None)
                payload = json.dumps(body if body is not None else PAGE).encode()
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def busy() -> Iterator[Busy]:
    server = Busy(
        {
            "/v1/models": [(429, {"Retry-After": "1"}, {"detail": "slow down"})],
            "/v1/jobs": [
                (503, {"Retry-After": "0"}, {"detail": "database unavailable"}),
                (502, {}, {"detail": "bad gateway"}),
                (202, {}, JOB),
            ],
            "/v1/jobs/job_404": [(404, {}, {"detail": "job 'job_404' was not found"})],
        }
    )
    yield server
    server.server.shutdown()


def test_busy_answers_are_retried_as_the_server_asks(busy: Busy) -> None:
    with Client(busy.url, "mpk_x", backoff=0.01) as client:
        assert list(client.list_models()) == []
        models = [seen for seen in busy.seen if seen[2] == "/v1/models"]
        assert len(models) == 2
        assert models[1][0] - models[0][0] >= 0.9  # it waited the Retry-After second

        job = client.submit({"model_id": "mdl_1", "passes": []})
        assert job.id == "job_1"
        creates = [seen for seen in busy.seen if seen[2] == "/v1/jobs"]
        assert len(creates) == 3
        keys = {seen[3]["Idempotency-Key"] for seen in creates}
        assert len(keys) == 1 and keys != {""}  # one key for the create and its retries

        with pytest.raises(ApiError) as refused:
            client.get_job("job_404")
        assert refused.value.status == 404 and refused.value.not_found
        assert len([seen for seen in busy.seen if seen[2] == "/v1/jobs/job_404"]) == 1
