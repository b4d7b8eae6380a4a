"""Batches of jobs submitted together, and the link from a retried job to the job it retries.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "batches",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("project_id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=True),
        sa.Column("idempotency_key", sa.String(length=255), nullable=True),
        sa.Column("request_hash", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_batches_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_batches")),
        sa.UniqueConstraint("project_id", "idempotency_key", name="uq_batches_project_idempotency"),
    )
    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.create_index(
            "ix_batches_project_created", ["project_id", "created_at", "id"], unique=False
        )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("batch_id", sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column("retry_of", sa.String(length=40), nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_jobs_batch_id_batches"),
            "batches",
            ["batch_id"],
            ["id"],
            ondelete="CASCADE",
        )
        batch_op.create_foreign_key(
            batch_op.f("fk_jobs_retry_of_jobs"), "jobs", ["retry_of"], ["id"], ondelete="SET NULL"
        )
        batch_op.create_index(batch_op.f("ix_jobs_batch_id"), ["batch_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_jobs_retry_of"), ["retry_of"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_jobs_retry_of"))
        batch_op.drop_index(batch_op.f("ix_jobs_batch_id"))
        batch_op.drop_constraint(batch_op.f("fk_jobs_retry_of_jobs"), type_="foreignkey")
        batch_op.drop_constraint(batch_op.f("fk_jobs_batch_id_batches"), type_="foreignkey")
        batch_op.drop_column("retry_of")
        batch_op.drop_column("batch_id")
    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.drop_index("ix_batches_project_created")
    op.drop_table("batches")
