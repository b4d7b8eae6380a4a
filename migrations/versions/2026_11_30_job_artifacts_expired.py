"""Jobs record when retention removed their artifacts, so that the API says so instead of
answering a plain 404.

Revision ID: 0009_artifacts_expired
Revises: 0008_workers
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009_artifacts_expired"
down_revision: str | None = "0008_workers"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("artifacts_expired_at", sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("artifacts_expired_at")
