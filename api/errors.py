"""RFC 9457 problem details for every error the API returns."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.request_context import REQUEST_ID_HEADER, STATE_REQUEST_ID
from core.admin import AdminError
from core.storage import StorageError
from optimizers.errors import OptimizerError

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
#: A problem's `type` is this base + a snake_case slug (`not_found`, `body_too_large`), the
#: casing of a job's `error.type`.
TYPE_BASE = "https://modelpress.dev/problems/"


def _status_slug(status: int) -> str:
    return HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")


class Problem(Exception):
    """An expected failure with its HTTP status and a message the user can act on."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        type: str | None = None,
        title: str | None = None,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.type = type or _status_slug(status)
        self.title = title or HTTPStatus(status).phrase
        self.errors = errors
        self.headers = headers


class BodyTooLarge(StarletteHTTPException):
    """A request body over MODELPRESS_MAX_JSON_BODY_BYTES, found while it is read. An
    HTTPException, because FastAPI passes those on from its body parsing (any other error
    there becomes a 400)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        super().__init__(413, self.problem().detail)

    def problem(self) -> Problem:
        return Problem(
            413,
            f"the request body is larger than the limit of {self.limit} bytes "
            "(MODELPRESS_MAX_JSON_BODY_BYTES)",
            type="body_too_large",
            # The rest of the body is not read: the connection cannot carry another request.
            headers={"Connection": "close"},
        )


def not_found(kind: str, resource_id: str) -> Problem:
    return Problem(404, f"{kind} {resource_id!r} was not found", type="not_found")


def in_use(kind: str, resource_id: str, job_ids: list[str]) -> Problem:
    """A deletion refused because unfinished jobs read the resource; it names them."""
    shown = ", ".join(job_ids[:10]) + (
        f" and {len(job_ids) - 10} more" if len(job_ids) > 10 else ""
    )
    return Problem(
        409,
        f"{kind} {resource_id!r} is read by unfinished job(s) {shown}; cancel them (or wait "
        f"until they finish), then delete the {kind}",
        type=f"{kind}_in_use",
    )


def field_error(loc: list[str | int], message: str, *, type: str = "invalid_spec") -> Problem:
    return Problem(
        422,
        f"{'.'.join(str(p) for p in loc)}: {message}",
        type=type,
        errors=[{"loc": loc, "msg": message}],
    )


#: Errors of the libraries the routes call (optimizers, core's admin and storage) that a
#: request can cause: `library_problem` is the one place that says how each is answered.
LIBRARY_ERRORS = (OptimizerError, AdminError, StorageError)

_ADMIN_PROBLEMS = {
    "not_found": (404, "not_found"),
    "exists": (409, "already_exists"),
    "invalid": (422, "invalid_request"),
}


def library_problem(exc: Exception, *, type: str | None = None, detail_prefix: str = "") -> Problem:
    """The answer to a library error: a model, dataset or spec the user can correct is a 422
    with the error's own type; `type` and `detail_prefix` say what it means to the route
    (see `answered_as`)."""
    if isinstance(exc, OptimizerError):
        status, slug, detail = 422, exc.type, exc.message
    elif isinstance(exc, AdminError):
        status, slug = _ADMIN_PROBLEMS[exc.kind]
        detail = exc.message
    elif isinstance(exc, StorageError):
        # The object store failed the service, not the request: worth a retry later.
        log.error("storage error: %s", exc)
        return Problem(
            503,
            "the file store did not answer as expected; retry in a moment",
            type="storage_unavailable",
            headers={"Retry-After": "1"},
        )
    else:
        raise TypeError(f"not a library error: {exc!r}") from exc
    return Problem(status, detail_prefix + detail, type=type or slug)


@contextmanager
def answered_as(*, type: str | None = None, detail_prefix: str = "") -> Iterator[None]:
    """Library errors raised inside are answered with this problem `type` and with
    `detail_prefix` before their message: what the failure means where it happened (anything
    wrong with an upload is an `invalid_model`, whichever check found it)."""
    try:
        yield
    except LIBRARY_ERRORS as exc:
        raise library_problem(exc, type=type, detail_prefix=detail_prefix) from exc


def problem_response(
    request: Request,
    *,
    status: int,
    type: str,
    title: str,
    detail: str,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": TYPE_BASE + type,
        "title": title,
        "status": status,
        "detail": detail,
        "instance": request.url.path,
    }
    if errors is not None:
        body["errors"] = errors
    # Set by api.request_context; the answer to an unexpected error is built outside that
    # layer, so the header is set here too.
    request_id = request.scope.get("state", {}).get(STATE_REQUEST_ID)
    if request_id is not None:
        body["request_id"] = request_id
        headers = {**(headers or {}), REQUEST_ID_HEADER: request_id}
    return JSONResponse(
        jsonable_encoder(body), status_code=status, media_type=PROBLEM_JSON, headers=headers
    )


PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "description": "RFC 9457 problem details",
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "request_id": {
            "type": "string",
            "description": "The request's id, also in the X-Request-ID header and its log lines",
        },
        "errors": {"type": "array", "items": {"type": "object"}},
    },
}


def _document_problems(schema: dict[str, Any]) -> None:
    """Every error answer in the OpenAPI document as what is really sent: problem+json."""
    schema.setdefault("components", {}).setdefault("schemas", {})["Problem"] = PROBLEM_SCHEMA
    content = {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}
    for path_item in schema.get("paths", {}).values():
        for operation in path_item.values():
            responses = operation.setdefault("responses", {})
            for code, response in responses.items():
                if code.isdigit() and int(code) >= 400:
                    response["content"] = content
            responses.setdefault(
                "default",
                {"description": "An error, as RFC 9457 problem details", "content": content},
            )


def _install_problem_openapi(app: FastAPI) -> None:
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        schema = generate()
        if "Problem" not in schema.get("components", {}).get("schemas", {}):
            _document_problems(schema)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def install_error_handlers(app: FastAPI) -> None:
    """Problem details for every error, in the answers and in the OpenAPI document."""
    _install_problem_openapi(app)

    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        return problem_response(
            request,
            status=exc.status,
            type=exc.type,
            title=exc.title,
            detail=exc.detail,
            errors=exc.errors,
            headers=exc.headers,
        )

    async def _library(request: Request, exc: Exception) -> JSONResponse:
        return await _problem(request, library_problem(exc))

    for library_error in LIBRARY_ERRORS:
        app.add_exception_handler(library_error, _library)

    @app.exception_handler(BodyTooLarge)
    async def _body_too_large(request: Request, exc: BodyTooLarge) -> JSONResponse:
        return await _problem(request, exc.problem())

    @app.exception_handler(DataError)
    async def _unstorable(request: Request, exc: DataError) -> JSONResponse:
        # The database refused a value the request carried (PostgreSQL: a NUL in a string,
        # a number out of a column's range); the request can be corrected, the service is fine.
        log.warning("refused a value on %s %s: %s", request.method, request.url.path, exc.orig)
        return problem_response(
            request,
            status=422,
            type="unstorable_value",
            title="Unprocessable Content",
            detail=f"a value in the request cannot be stored: {str(exc.orig).splitlines()[0]}",
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": list(err.get("loc", ())), "msg": err.get("msg", ""), "type": err.get("type")}
            for err in exc.errors()
        ]
        summary = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors[:5])
        return problem_response(
            request,
            status=422,
            type="invalid_request",
            title="Unprocessable Content",
            detail=summary or "the request is invalid",
            errors=errors,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        phrase = HTTPStatus(exc.status_code).phrase
        return problem_response(
            request,
            status=exc.status_code,
            type=_status_slug(exc.status_code),
            title=phrase,
            detail=str(exc.detail),
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(
            request,
            status=500,
            type="internal_error",
            title="Internal Server Error",
            detail="an unexpected error occurred; it has been logged",
        )
