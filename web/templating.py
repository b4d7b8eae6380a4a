"""The Jinja2 environment of the dashboard's pages: autoescaped templates and the few
filters they share."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from api.schemas import JobOut
from web.auth import SignedIn

TEMPLATES_DIR = Path(__file__).parent / "templates"
STATIC_DIR = Path(__file__).parent / "static"

templates = Jinja2Templates(directory=TEMPLATES_DIR)


def filesize(size: int | None) -> str:
    if size is None:
        return "\u2013"
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"


def when(moment: datetime | None) -> str:
    return "\u2013" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def describe(job: JobOut) -> str:
    """What tells a job apart: its sweep labels, else its passes. The same words as the
    client's `modelpress.compare.describe`, written again: the service does not install the
    client package, and the client imports nothing of the service."""
    if job.labels:
        return ", ".join(f"{k.split('.')[-1]}={v}" for k, v in job.labels.items())
    passes = job.spec.get("passes") or []
    return " + ".join(_pass_name(p) for p in passes)


def _pass_name(spec: dict[str, Any]) -> str:
    if spec.get("kind") == "auto":
        return f"auto search for {spec.get('objective') or 'latency'}"
    return "/".join(str(spec.get(k)) for k in ("kind", "method") if spec.get(k))


templates.env.filters["filesize"] = filesize
templates.env.filters["when"] = when
templates.env.filters["describe"] = describe


def render(
    request: Request,
    name: str,
    *,
    viewer: SignedIn | None,
    status_code: int = 200,
    headers: dict[str, str] | None = None,
    **context: Any,
) -> HTMLResponse:
    """A page or fragment; every template sees the viewer and its CSRF token."""
    context.update(
        viewer=viewer,
        csrf_token=viewer.csrf_token if viewer else "",
        is_fragment=request.headers.get("hx-request") == "true",
    )
    return templates.TemplateResponse(
        request, name, context, status_code=status_code, headers=headers
    )
