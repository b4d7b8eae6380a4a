"""The workers panel: which queues some live worker serves, and what each worker runs."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from api import key_rules
from api.deps import SessionDep, SettingsDep
from web.auth import AdminViewer
from web.templating import render
from web.workers_view import live_workers

router = APIRouter(include_in_schema=False)


@router.get("/admin/workers", response_class=HTMLResponse)
def workers_page(
    request: Request, viewer: AdminViewer, session: SessionDep, settings: SettingsDep
) -> HTMLResponse:
    return render(
        request,
        "admin/workers.html",
        viewer=viewer,
        nav="admin",
        is_instance=key_rules.is_instance(viewer.key),
        view=live_workers(session, viewer, settings=settings),
    )
