"""The workers panel: which queues a live worker serves, and what each runs; another
project's jobs are counted, never named."""

from __future__ import annotations

from datetime import timedelta

from fastapi.testclient import TestClient

from core.admin import create_key, create_project
from core.db import new_id, session_scope, utcnow
from core.tables import ApiKey, Job
from tests.web.conftest import sign_in


def _running_job(*, project_id: str, worker: str, queue: str, silent_s: float = 0) -> str:
    job_id = new_id("job")
    with session_scope() as session:
        session.add(
            Job(
                id=job_id,
                project_id=project_id,
                spec={},
                queue=queue,
                status="running",
                worker=worker,
                started_at=utcnow(),
                heartbeat_at=utcnow() - timedelta(seconds=silent_s),
            )
        )
    return job_id


def test_the_panel_shows_served_queues_and_only_own_job_ids(pages: TestClient) -> None:
    with session_scope() as session:
        own_project = session.query(ApiKey).one().project_id
        other_project = create_project(session, name="other").id
        _, admin_key = create_key(session, project_id=own_project, name="ops", scopes=["admin"])
        _, other_admin = create_key(
            session, project_id=other_project, name="their ops", scopes=["admin"]
        )
    own_job = _running_job(project_id=own_project, worker="host-a:101", queue="cpu")
    other_job = _running_job(project_id=other_project, worker="host-a:101", queue="cpu")
    _running_job(project_id=own_project, worker="host-b:7", queue="gpu", silent_s=3600)

    sign_in(pages, admin_key)
    page = pages.get("/admin/workers")
    assert page.status_code == 200
    text = page.text
    cpu_row = text[text.index("<code>cpu</code>") :].split("</tr>")[0]
    gpu_row = text[text.index("<code>gpu</code>") :].split("</tr>")[0]
    assert "yes" in cpu_row and "host-a:101" in cpu_row
    # A worker whose job stopped heartbeating an hour ago is not live.
    assert "none seen" in gpu_row and "host-b:7" not in text
    assert f'href="/jobs/{own_job}"' in text
    assert other_job not in text and "1 job of another project" in text

    # The other project's admin sees the same worker the other way round.
    sign_in(pages, other_admin)
    theirs = pages.get("/admin/workers").text
    assert f'href="/jobs/{other_job}"' in theirs and own_job not in theirs
