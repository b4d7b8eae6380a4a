"""Log lines of the API and the worker: one JSON object per line (or plain text for a
terminal), each carrying the id of the request or job it was written for."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

from core.settings import Settings

#: Set by the API for the request being answered (api.request_context).
request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
#: Set by the worker for the job it runs (worker.runner).
job_id: ContextVar[str | None] = ContextVar("job_id", default=None)

_IDS = (("request_id", request_id), ("job_id", job_id))


class _ContextIds(logging.Filter):
    """Puts the current request and job ids on every record; a filter on the handler, so that
    the records of every library's loggers get them too."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, var in _IDS:
            value = var.get()
            if value is not None and not hasattr(record, name):
                setattr(record, name, value)
        return True


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ids = " ".join(
            f"{name}={getattr(record, name)}" for name, _ in _IDS if hasattr(record, name)
        )
        if not ids:
            return line
        first, newline, rest = line.partition("\n")
        return f"{first} [{ids}]{newline}{rest}"


def _formatter(format: str) -> logging.Formatter:
    if format == "json":
        # python-json-logger: every `extra=` field of a record becomes a member of its line.
        return JsonFormatter(
            "%(levelname)s %(name)s %(message)s",
            rename_fields={"levelname": "level", "name": "logger"},
            # ISO 8601 in UTC, to the microsecond.
            timestamp="time",
            # uvicorn's copy of its message with terminal colours.
            reserved_attrs=[*RESERVED_ATTRS, "color_message"],
        )
    return _TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")


def configure_logging(settings: Settings, *, level: int | str | None = None) -> None:
    """The root logger writes to stderr in MODELPRESS_LOG_FORMAT; the loggers of uvicorn and
    Celery pass their records to it."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_formatter(settings.resolved_log_format))
    handler.addFilter(_ContextIds())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level or settings.log_level)
    # Python's warnings become log lines too, rather than bare text among the JSON lines.
    logging.captureWarnings(True)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True


@contextmanager
def job_context(job: str) -> Iterator[None]:
    """Log lines written inside carry `job_id`."""
    token = job_id.set(job)
    try:
        yield
    finally:
        job_id.reset(token)
