"""Jobs: one spelling of the stopping state, `canceling` (was `cancelling`), and one casing
for error types, snake_case (a stored `worker-lost` becomes `worker_lost`).

Revision ID: 0006_canceling
Revises: 0005_instance_scope
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_canceling"
down_revision: str | None = "0005_instance_scope"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

jobs = sa.table("jobs", sa.column("status", sa.String), sa.column("error_type", sa.String))


def _rename_status(old: str, new: str) -> None:
    op.execute(sa.update(jobs).where(jobs.c.status == old).values(status=new))


def upgrade() -> None:
    _rename_status("cancelling", "canceling")
    op.execute(
        sa.update(jobs)
        .where(jobs.c.error_type.contains("-"))
        .values(error_type=sa.func.replace(jobs.c.error_type, "-", "_"))
    )


def downgrade() -> None:
    # The older code knows only the old spelling of the state. Error types stay snake_case:
    # which ones were written otherwise is not recorded, and the older code shows them as text.
    _rename_status("canceling", "cancelling")
