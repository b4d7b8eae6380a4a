"""What can go wrong, as exceptions a script can catch. API errors are told apart by their
HTTP status, not by the problem `type` slug (whose spelling may change between versions)."""

from __future__ import annotations

from typing import Any


class ModelpressError(Exception):
    """Every error this package raises."""


class ConnectionFailed(ModelpressError):
    """The service could not be reached, even after retries."""


class ApiError(ModelpressError):
    """An RFC 9457 problem answer: `status`, `detail`, and for invalid specs `errors` (each
    with the field's `loc`)."""

    def __init__(self, status: int, detail: str, problem: dict[str, Any] | None = None) -> None:
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail
        self.problem = problem or {}

    @property
    def errors(self) -> list[dict[str, Any]]:
        return list(self.problem.get("errors") or [])

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def invalid(self) -> bool:
        return self.status == 422

    @property
    def unauthorized(self) -> bool:
        return self.status in (401, 403)


class WaitTimeout(ModelpressError):
    """A wait ran out of time before the job (or batch) finished."""


class JobNotSucceeded(ModelpressError):
    """A job that had to succeed failed or was canceled."""

    def __init__(self, job: Any) -> None:
        error = f": {job.error.type}: {job.error.message}" if job.error else ""
        super().__init__(f"job {job.id} {job.status}{error}")
        self.job = job


class ChecksumMismatch(ModelpressError):
    """A downloaded file's sha256 is not the one the service recorded."""
