"""Experiments: one row per queued spec, one per (method, seed) run with its status and result.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05 19:00:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")


def _status(name: str) -> sa.Enum:
    return sa.Enum(*STATUSES, name=name, native_enum=False, create_constraint=True, length=24)


def upgrade() -> None:
    op.create_table(
        "experiments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("spec_sha256", sa.String(length=80), nullable=False),
        sa.Column("base_id", sa.Integer(), nullable=False),
        sa.Column("status", _status("experiment_status"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["base_id"], ["base_models.id"],
                                name=op.f("fk_experiments_base_id_base_models"),
                                ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_experiments")),
    )
    op.create_index(op.f("ix_experiments_base_id"), "experiments", ["base_id"], unique=False)
    op.create_index("ix_experiments_name_id", "experiments", ["name", "id"], unique=False)
    op.create_table(
        "experiment_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("experiment_id", sa.Integer(), nullable=False),
        sa.Column("method", sa.String(length=32), nullable=False),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column("status", _status("run_status"), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("state_id", sa.Integer(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["experiment_id"], ["experiments.id"],
                                name=op.f("fk_experiment_runs_experiment_id_experiments"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"],
                                name=op.f("fk_experiment_runs_job_id_jobs"), ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["state_id"], ["model_states.id"],
                                name=op.f("fk_experiment_runs_state_id_model_states"),
                                ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_experiment_runs")),
        sa.UniqueConstraint("experiment_id", "method", "seed",
                            name=op.f("uq_experiment_runs_experiment_id_method_seed")),
    )
    op.create_index(op.f("ix_experiment_runs_experiment_id"), "experiment_runs",
                    ["experiment_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_experiment_runs_experiment_id"), table_name="experiment_runs")
    op.drop_table("experiment_runs")
    op.drop_index("ix_experiments_name_id", table_name="experiments")
    op.drop_index(op.f("ix_experiments_base_id"), table_name="experiments")
    op.drop_table("experiments")
