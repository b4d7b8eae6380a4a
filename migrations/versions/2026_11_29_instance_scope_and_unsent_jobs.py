"""Keys: the first-start admin key gets the new `instance` scope (projects and keys of every
project); every other admin key is from now on admin of its own project only.
Jobs: `sent_at` NULL now means "not yet handed to the broker", sent at the reaper's next pass;
queued jobs the API had sent (NULL until now) get their queue time.

Revision ID: 0005_instance_scope
Revises: 0004
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_instance_scope"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: The name core.bootstrap gives the key it creates on an empty database.
BOOTSTRAP_KEY_NAME = "bootstrap admin"

api_keys = sa.table(
    "api_keys",
    sa.column("id", sa.String),
    sa.column("name", sa.String),
    sa.column("scopes", sa.JSON),
)
jobs = sa.table("jobs", sa.column("sent_at", sa.DateTime), sa.column("queued_at", sa.DateTime))


def _set_scopes(*, add: str | None = None, remove: str | None = None) -> None:
    connection = op.get_bind()
    rows = connection.execute(
        sa.select(api_keys.c.id, api_keys.c.scopes).where(api_keys.c.name == BOOTSTRAP_KEY_NAME)
    ).all()
    for key_id, scopes in rows:
        scopes = list(scopes or [])
        if add and "admin" in scopes and add not in scopes:
            scopes.append(add)
        elif remove and remove in scopes:
            scopes.remove(remove)
        else:
            continue
        connection.execute(sa.update(api_keys).where(api_keys.c.id == key_id).values(scopes=scopes))


def upgrade() -> None:
    _set_scopes(add="instance")
    op.execute(sa.update(jobs).where(jobs.c.sent_at.is_(None)).values(sent_at=jobs.c.queued_at))


def downgrade() -> None:
    # Before this revision every admin key acted on every project; `sent_at` values stay, as
    # the older code reads them as re-send times.
    _set_scopes(remove="instance")
