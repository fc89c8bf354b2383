"""Skills: a suite of any length and the held-out split of a plain JSONL; eval rows: samples.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05 07:20:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("skills") as batch:
        batch.alter_column("suite", existing_type=sa.String(length=256), type_=sa.Text(),
                           existing_nullable=False)
        batch.add_column(sa.Column("heldout", sa.JSON(), nullable=True))
    with op.batch_alter_table("eval_results") as batch:
        batch.add_column(sa.Column("samples_digest", sa.String(length=80), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("eval_results") as batch:
        batch.drop_column("samples_digest")
    with op.batch_alter_table("skills") as batch:
        batch.drop_column("heldout")
        batch.alter_column("suite", existing_type=sa.Text(), type_=sa.String(length=256),
                           existing_nullable=False)
