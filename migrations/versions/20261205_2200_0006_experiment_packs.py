"""Experiment packs: the link from each pack a graft run made to its experiment run.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05 22:00:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "experiment_packs",
        sa.Column("pack_id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["pack_id"], ["skill_packs.id"],
                                name=op.f("fk_experiment_packs_pack_id_skill_packs"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["run_id"], ["experiment_runs.id"],
                                name=op.f("fk_experiment_packs_run_id_experiment_runs"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("pack_id", name=op.f("pk_experiment_packs")),
    )
    op.create_index(op.f("ix_experiment_packs_run_id"), "experiment_packs", ["run_id"],
                    unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_experiment_packs_run_id"), table_name="experiment_packs")
    op.drop_table("experiment_packs")
