"""Crafted headers, parameters and bodies get a 4xx problem that says what is wrong, never a
500, and no body is read past its limit."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.api.helpers import upload_model
from tests.models.onnx_basic import make_mlp


def _assert_problem(response: Any, status: int, type_suffix: str | None = None) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    if type_suffix is not None:
        assert response.json()["type"].endswith("/" + type_suffix), response.json()


@pytest.fixture
def model(client: TestClient, tmp_path: Path) -> dict[str, Any]:
    return upload_model(client, make_mlp(tmp_path / "m.onnx"))


def test_a_range_with_thousands_of_digits_is_416_not_500(
    client: TestClient, model: dict[str, Any]
) -> None:
    url = f"/v1/models/{model['id']}/content"
    huge = "9" * 5000
    for header in (f"bytes={huge}-", f"bytes={huge}-{huge}"):
        _assert_problem(client.get(url, headers={"Range": header}), 416, "range_not_satisfiable")
    # The last N bytes, N larger than the object: the whole object, as RFC 9110 says.
    suffix = client.get(url, headers={"Range": f"bytes=-{huge}"})
    assert suffix.status_code == 206
    assert len(suffix.content) == model["size_bytes"]
    # A first byte inside the object and an enormous last byte: up to the end.
    tail = client.get(url, headers={"Range": f"bytes=10-{huge}"})
    assert tail.status_code == 206
    assert (
        tail.headers["content-range"] == f"bytes 10-{model['size_bytes'] - 1}/{model['size_bytes']}"
    )


@pytest.mark.parametrize(
    "header",
    ["bytes=abc", "bytes=5-2", "items=0-10", "bytes=0-1,4-5", "bytes=-", "bytes 0-1", "bytes=--1"],
)
def test_a_range_that_is_not_one_valid_byte_range_gets_the_whole_object(
    client: TestClient, model: dict[str, Any], header: str
) -> None:
    response = client.get(f"/v1/models/{model['id']}/content", headers={"Range": header})
    assert response.status_code == 200
    assert len(response.content) == model["size_bytes"]


@pytest.mark.parametrize("param", ["created_after", "created_before"])
def test_a_job_filter_time_without_a_time_zone_is_422_saying_so(
    client: TestClient, param: str
) -> None:
    response = client.get("/v1/jobs", params={param: "2026-11-29T12:00:00"})
    _assert_problem(response, 422, "invalid_request")
    assert param in response.json()["detail"] and "timezone" in response.json()["detail"]
    for out_of_range in ("9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00"):
        _assert_problem(client.get("/v1/jobs", params={param: out_of_range}), 422)
    ok = client.get("/v1/jobs", params={param: "2026-11-29T12:00:00+01:00"})
    assert ok.status_code == 200 and ok.json()["items"] == []


def _token(payload: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "token",
    [
        _token({"c": "2026-11-29T12:00:00", "i": "job_x"}),  # no time zone
        _token({"c": "9999-12-31T23:59:59-14:00", "i": "job_x"}),  # no UTC equivalent
        _token({"c": "2026-11-29T12:00:00+00:00", "i": ["job_x"]}),
        _token({"c": "2026-11-29T12:00:00+00:00", "i": {"$gt": ""}}),
        _token(["c", "i"]),
        _token({"c": "2026-11-29T12:00:00+00:00", "i": "job_x"})[:-7],  # truncated
        "A" * 20_000,
        "%ff%fe",
        "\u00e9\u00e9",
    ],
)
def test_a_forged_or_truncated_page_token_is_422(
    client: TestClient, model: dict[str, Any], token: str
) -> None:
    for route in ("/v1/jobs", "/v1/models", "/v1/datasets", "/v1/batches"):
        response = client.get(route, params={"page_token": token})
        _assert_problem(response, 422, "invalid_page_token")


def test_a_huge_or_odd_page_size_is_422_on_every_list(client: TestClient) -> None:
    for route in ("/v1/jobs", "/v1/models", "/v1/datasets", "/v1/batches"):
        for size in ("9" * 5000, "201", "0", "-1", "1e3", "\u0661"):
            _assert_problem(client.get(route, params={"page_size": size}), 422)


def test_bytes_that_are_not_utf8_in_the_query_or_path_are_4xx(
    client: TestClient, model: dict[str, Any]
) -> None:
    listed = client.get("/v1/jobs?model_id=%ff%fe&status=%c3%28")
    _assert_problem(listed, 422)
    assert client.get("/v1/jobs?model_id=%ff%fe").json()["items"] == []
    _assert_problem(client.get("/v1/jobs/%ff%fe"), 404, "not_found")
    _assert_problem(client.get("/v1/models/%c3%28/content"), 404, "not_found")


@pytest.mark.parametrize(
    "db_backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def test_a_nul_in_the_url_is_400(client: TestClient, model: dict[str, Any]) -> None:
    # PostgreSQL refuses strings with a NUL: without the check these were 500s there.
    for url in (
        "/v1/jobs/job%00x",
        "/v1/jobs?model_id=a%00b",
        f"/v1/models/{model['id']}%00",
        "/v1/keys?project_id=%00",
        "/v1/artifacts/%00/content",
    ):
        _assert_problem(client.get(url), 400, "invalid_url")


@pytest.mark.parametrize(
    "db_backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def test_a_nul_in_a_stored_string_is_not_a_500(client: TestClient) -> None:
    project = client.post("/v1/projects", json={"name": "team-nul"}).json()
    response = client.post("/v1/keys", json={"project_id": project["id"], "name": "ci\u0000x"})
    if response.status_code == 422:  # PostgreSQL cannot store it, and says so
        _assert_problem(response, 422, "unstorable_value")
        assert "NUL" in response.json()["detail"]
    else:  # SQLite stores it as it came
        assert response.status_code == 201 and response.json()["name"] == "ci\u0000x"
    assert client.get("/v1/keys").status_code == 200


def test_a_json_body_over_the_limit_is_413_before_it_is_parsed(
    client: TestClient, model: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from core.settings import get_settings

    limit = get_settings().max_json_body_bytes
    spec = {"model_id": model["id"], "passes": [{"kind": "quantize", "method": "dynamic"}]}
    padded = json.dumps({**spec, "padding": "x" * limit}).encode()
    # With its length declared: refused on the length alone.
    response = client.post("/v1/jobs", content=padded, headers={"Content-Type": "application/json"})
    _assert_problem(response, 413, "body_too_large")
    assert "MODELPRESS_MAX_JSON_BODY_BYTES" in response.json()["detail"]

    # Sent in chunks without a length: refused once the bytes read pass the limit.
    sent = 0

    def chunks() -> Iterator[bytes]:
        nonlocal sent
        for start in range(0, len(padded), 64 * 1024):
            sent += 1
            yield padded[start : start + 64 * 1024]

    response = client.post(
        "/v1/batches", content=chunks(), headers={"Content-Type": "application/json"}
    )
    _assert_problem(response, 413, "body_too_large")
    for route in ("/v1/projects", "/v1/keys"):
        _assert_problem(client.post(route, content=padded), 413, "body_too_large")
    assert client.get("/v1/jobs").json()["items"] == []
    # A body under the limit is served as before.
    assert client.post("/v1/jobs", json=spec).status_code == 202


def test_uploads_keep_their_own_limit_above_the_json_limit(
    client: TestClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from core.settings import get_settings

    monkeypatch.setenv("MODELPRESS_MAX_JSON_BODY_BYTES", "2048")
    get_settings.cache_clear()
    model = make_mlp(tmp_path / "m.onnx")
    assert model.stat().st_size > 2048
    assert upload_model(client, model)["size_bytes"] == model.stat().st_size
    _assert_problem(client.post("/v1/projects", json={"name": "x" * 3000}), 413, "body_too_large")
