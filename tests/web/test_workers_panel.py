"""The workers panel: which queues a live worker serves, and what each runs; another
project's jobs are counted, never named."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import update

from core import workers
from core.admin import create_key, create_project
from core.db import new_id, session_scope, utcnow
from core.dbclock import db_utcnow
from core.tables import ApiKey, Job, Worker
from core.workers import Registration
from tests.web.conftest import sign_in


def _worker(name: str, queues: list[str], **values: object) -> str:
    registration = Registration(
        **{  # type: ignore[arg-type]
            "id": new_id("wkr"),
            "name": name,
            "host": name.split("@")[1],
            "pid": 4242,
            "queues": queues,
            "refused": {},
            "cores": [0],
            "device": {"kind": "cpu"},
            "versions": {"modelpress": "0.1.0"},
            **values,
        }
    )
    with session_scope() as session:
        workers.register(session, registration)
    return registration.id


def _running(worker_id: str, *, project_id: str) -> str:
    job_id = new_id("job")
    with session_scope() as session:
        session.add(
            Job(
                id=job_id,
                project_id=project_id,
                spec={},
                queue="cpu",
                status="running",
                started_at=utcnow(),
                heartbeat_at=utcnow(),
                # As a claim records it: the worker's own row learns it at its next heartbeat,
                # the panel reads it from the job at once.
                worker_id=worker_id,
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
    busy = _worker(
        "cpu-a@host-a", ["cpu"], refused={"gpu": "the CUDA execution provider did not load"}
    )
    _worker("cpu-b@host-b", ["cpu"], cores=[1])  # idle: shown too
    dead = _worker("gpu-a@host-c", ["gpu"], device={"kind": "cuda", "name": "NVIDIA H200"})
    with session_scope() as session:
        session.execute(
            update(Worker).where(Worker.id == dead).values(heartbeat_at=db_utcnow(-3600))
        )
    own_job = _running(busy, project_id=own_project)

    sign_in(pages, admin_key)
    page = pages.get("/admin/workers")
    assert page.status_code == 200
    text = page.text
    cpu_row = text[text.index("<code>cpu</code>") :].split("</tr>")[0]
    gpu_row = text[text.index("<code>gpu</code>") :].split("</tr>")[0]
    assert "yes" in cpu_row and "cpu-a@host-a" in cpu_row and "cpu-b@host-b" in cpu_row
    # A worker whose heartbeat stopped an hour ago is not live.
    assert "no live worker" in gpu_row and "gpu-a@host-c" not in text
    assert f'href="/jobs/{own_job}"' in text
    assert "refused gpu: the CUDA execution provider did not load" in text
    idle_row = text[text.index("<code>cpu-b@host-b</code>") :].split("</tr>")[0]
    assert "idle" in idle_row

    # The other project's admin sees the same worker busy, without the job's id.
    sign_in(pages, other_admin)
    theirs = pages.get("/admin/workers").text
    assert own_job not in theirs and "1 job of another project" in theirs
