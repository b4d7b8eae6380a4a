"""Auto searches: a search job (kind `search`) runs its trials as child jobs (kind `trial`,
`parent_id`), and a trial's measured result is found again by its cache key.

Revision ID: 0010_auto_search
Revises: 0009_artifacts_expired
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010_auto_search"
down_revision: str | None = "0009_artifacts_expired"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("kind", sa.String(length=16), nullable=False, server_default="job")
        )
        batch_op.add_column(sa.Column("parent_id", sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column("trial", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("cache_key", sa.String(length=64), nullable=True))
        batch_op.create_foreign_key(
            "fk_jobs_parent_id_jobs", "jobs", ["parent_id"], ["id"], ondelete="CASCADE"
        )
        batch_op.create_index("ix_jobs_parent_id", ["parent_id"])
        batch_op.create_index("ix_jobs_project_cache_key", ["project_id", "cache_key"])
        batch_op.create_index("ix_jobs_kind_status", ["kind", "status"])


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_kind_status")
        batch_op.drop_index("ix_jobs_project_cache_key")
        batch_op.drop_index("ix_jobs_parent_id")
        batch_op.drop_constraint("fk_jobs_parent_id_jobs", type_="foreignkey")
        batch_op.drop_column("cache_key")
        batch_op.drop_column("trial")
        batch_op.drop_column("parent_id")
        batch_op.drop_column("kind")
