"""The migrations build exactly the schema the code declares, on SQLite and PostgreSQL,
and can be rolled back."""

from __future__ import annotations

import json
from datetime import datetime

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from core.db import Base, make_engine
from core.migrate import alembic_config

T = datetime(2026, 11, 1, 12, 0)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_upgrade_matches_models_and_downgrade_works(
    service_env: dict[str, str], tmp_path: object
) -> None:
    from core.settings import get_settings

    url = get_settings().resolved_database_url
    config = alembic_config(url)
    command.downgrade(config, "base")
    engine = make_engine(url)
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}

    command.upgrade(config, "head")
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diff == [], f"models and migrations disagree: {diff}"


def test_stored_keys_and_queued_jobs_keep_working_across_the_instance_scope_revision(
    service_env: dict[str, str],
) -> None:
    from core.settings import get_settings

    url = get_settings().resolved_database_url
    config = alembic_config(url)
    command.downgrade(config, "0004")
    engine = make_engine(url)
    keys = {"bootstrap admin": ["read", "write", "admin"], "team admin": ["admin"], "ci": ["read"]}
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM api_keys"))
        conn.execute(
            text("INSERT INTO projects (id, name, created_at) VALUES ('p', 'p', :t)"), {"t": T}
        )
        for name, scopes in keys.items():
            conn.execute(
                text(
                    "INSERT INTO api_keys (id, project_id, name, display_prefix, key_hash, scopes,"
                    " created_at) VALUES (:id, 'p', :name, 'mpk_x', :id, :scopes, :t)"
                ),
                {"id": f"key_{name}", "name": name, "scopes": json.dumps(scopes), "t": T},
            )
        conn.execute(
            text(
                "INSERT INTO jobs (id, project_id, spec, dataset_ids, extra_model_ids, queue, "
                "status, progress, attempts, max_attempts, created_at, queued_at, updated_at) "
                "VALUES ('job_q', 'p', '{}', '[]', '[]', 'cpu', 'queued', 0, 0, 3, :t, :t, :t)"
            ),
            {"t": T},
        )

    command.upgrade(config, "head")
    with engine.connect() as conn:
        stored = {
            name: json.loads(scopes) if isinstance(scopes, str) else scopes
            for name, scopes in conn.execute(text("SELECT name, scopes FROM api_keys"))
        }
        sent_at = conn.execute(text("SELECT sent_at FROM jobs WHERE id = 'job_q'")).scalar_one()
    engine.dispose()
    # The first-start key keeps managing every project; the others keep what they had, now
    # within their own project.
    assert stored == {**keys, "bootstrap admin": ["read", "write", "admin", "instance"]}
    # A job the API had sent (sent_at NULL until now) is not taken for one it never sent.
    assert sent_at is not None


def test_jobs_stored_with_the_old_spellings_read_in_the_new_ones(
    service_env: dict[str, str],
) -> None:
    from core.settings import get_settings

    url = get_settings().resolved_database_url
    config = alembic_config(url)
    command.downgrade(config, "0005_instance_scope")
    engine = make_engine(url)
    old = {
        "job_stopping": ("cancelling", None),
        "job_lost": ("failed", "worker-lost"),
        "job_memory": ("failed", "memory_limit"),
        "job_running": ("running", None),
    }
    with engine.begin() as conn:
        conn.execute(
            text("INSERT INTO projects (id, name, created_at) VALUES ('p', 'p', :t)"), {"t": T}
        )
        for job_id, (status, error_type) in old.items():
            conn.execute(
                text(
                    "INSERT INTO jobs (id, project_id, spec, dataset_ids, extra_model_ids, queue, "
                    "status, error_type, progress, attempts, max_attempts, created_at, "
                    "updated_at) VALUES (:id, 'p', '{}', '[]', '[]', 'cpu', :status, :error, 0, "
                    "1, 3, :t, :t)"
                ),
                {"id": job_id, "status": status, "error": error_type, "t": T},
            )

    command.upgrade(config, "head")
    with engine.connect() as conn:
        stored = {
            job_id: (status, error_type)
            for job_id, status, error_type in conn.execute(
                text("SELECT id, status, error_type FROM jobs")
            )
        }
    command.downgrade(config, "0005_instance_scope")
    with engine.connect() as conn:
        rolled_back = conn.execute(
            text("SELECT status FROM jobs WHERE id = 'job_stopping'")
        ).scalar_one()
    engine.dispose()
    command.upgrade(config, "head")

    assert stored == {
        "job_stopping": ("canceling", None),
        "job_lost": ("failed", "worker_lost"),
        "job_memory": ("failed", "memory_limit"),
        "job_running": ("running", None),
    }
    # The older code, rolled back to, finds the job in the state it knows.
    assert rolled_back == "cancelling"
