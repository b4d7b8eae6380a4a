"""The migrations build exactly the schema the code declares, on SQLite and PostgreSQL,
and can be rolled back."""

from __future__ import annotations

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from core.db import Base, make_engine
from core.migrate import alembic_config


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
