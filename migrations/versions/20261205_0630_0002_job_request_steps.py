"""Jobs: the typed learn request in its own column, step outputs in `job_steps`, owner columns.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-05 06:30:00+00:00

Until 0001 one JSON column, `params`, held what was asked, what each step produced ("out"),
step timings ("timings") and the worker that held the job ("owner"). The upgrade splits an
existing row's params over the new places; the downgrade folds them back.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timezone

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Keys of a 0001 params document that were not part of the request.
STEP_KEYS = ("out", "timings", "owner")


def _jobs(columns: Sequence[str]) -> sa.TableClause:
    return sa.table("jobs", sa.column("id", sa.Integer), *(sa.column(c, sa.JSON) for c in columns),
                    sa.column("owner_host", sa.String), sa.column("owner_pid", sa.Integer))


STEPS = sa.table("job_steps", sa.column("job_id", sa.Integer), sa.column("stage", sa.String),
                 sa.column("output", sa.JSON), sa.column("seconds", sa.Double),
                 sa.column("attempt", sa.Integer),
                 sa.column("finished_at", sa.DateTime(timezone=True)))


def _doc(value) -> dict:
    if isinstance(value, str):  # some drivers hand JSON back as text
        value = json.loads(value)
    return dict(value or {})


def _request_of(params: dict) -> dict:
    """A 0001 params document as a LearnRequest document (its field names)."""
    options = dict(params.get("options") or {})
    request = {k: v for k, v in params.items()
               if k not in (*STEP_KEYS, "train", "options", "source_id")}
    request["sft"] = dict(params.get("train") or {})
    if "dpo" in options:
        request["dpo"] = options.pop("dpo")
    if "distill_rows" in options:
        request["distill"] = {"max_prompts": options.pop("distill_rows")}
    if "verify" in options:
        request.setdefault("distill", {})["verify"] = options.pop("verify")
    request.update(options)  # eval_limit, general_suite
    return request


def upgrade() -> None:
    op.create_table(
        "job_steps",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("stage", sa.String(length=64), nullable=False),
        sa.Column("output", sa.JSON(), nullable=False),
        sa.Column("seconds", sa.Double(), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_job_steps_job_id_jobs"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_steps")),
        sa.UniqueConstraint("job_id", "stage", name=op.f("uq_job_steps_job_id_stage")),
    )
    op.create_index(op.f("ix_job_steps_job_id"), "job_steps", ["job_id"], unique=False)
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("request", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("owner_host", sa.String(length=255), nullable=True))
        batch.add_column(sa.Column("owner_pid", sa.Integer(), nullable=True))

    conn = op.get_bind()
    jobs = _jobs(("params", "request"))
    now = datetime.now(timezone.utc)
    steps = []
    for job_id, raw in conn.execute(sa.select(jobs.c.id, jobs.c.params)).all():
        params = _doc(raw)
        owner = params.get("owner") or {}
        conn.execute(jobs.update().where(jobs.c.id == job_id).values(
            request=_request_of(params), owner_host=owner.get("host"), owner_pid=owner.get("pid")))
        timings = params.get("timings") or {}
        steps += [{"job_id": job_id, "stage": stage, "output": output,
                   "seconds": timings.get(stage), "attempt": 1, "finished_at": now}
                  for stage, output in (params.get("out") or {}).items()]

    with op.batch_alter_table("jobs") as batch:
        batch.alter_column("request", existing_type=sa.JSON(), nullable=False)
        batch.drop_column("params")
    # Only now: SQLite's batch mode rebuilds `jobs`, and dropping the old copy would cascade
    # to rows already in job_steps.
    if steps:
        conn.execute(STEPS.insert(), steps)


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("params", sa.JSON(), nullable=True))
    conn = op.get_bind()
    jobs = _jobs(("params", "request"))
    for job_id, raw, host, pid in conn.execute(sa.select(
            jobs.c.id, jobs.c.request, jobs.c.owner_host, jobs.c.owner_pid)).all():
        request = _doc(raw)
        rows = conn.execute(sa.select(STEPS.c.stage, STEPS.c.output, STEPS.c.seconds)
                            .where(STEPS.c.job_id == job_id)).all()
        params = {k: v for k, v in request.items()
                  if k not in ("sft", "dpo", "distill", "eval_limit", "general_suite", "gate")}
        params["train"] = request.get("sft") or {}
        options = {k: request[k] for k in ("eval_limit", "general_suite") if request.get(k)}
        if request.get("dpo"):
            options["dpo"] = request["dpo"]
        params["options"] = options
        params["out"] = {stage: _doc(output) for stage, output, _ in rows}
        params["timings"] = {stage: s for stage, _, s in rows if s is not None}
        if host:
            params["owner"] = {"host": host, "pid": pid}
        conn.execute(jobs.update().where(jobs.c.id == job_id).values(params=params))
    with op.batch_alter_table("jobs") as batch:
        batch.alter_column("params", existing_type=sa.JSON(), nullable=False)
        batch.drop_column("owner_pid")
        batch.drop_column("owner_host")
        batch.drop_column("request")
    op.drop_index(op.f("ix_job_steps_job_id"), table_name="job_steps")
    op.drop_table("job_steps")
