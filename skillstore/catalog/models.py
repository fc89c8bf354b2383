"""Catalog tables: bases, skills, packs, lineage, jobs, model states, eval results, promotions,
experiments, their runs and the packs they made."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column, relationship

from .schema import EdgeKind, JobStatus, PackStatus, Record, enum_column, utcnow

NAME = sa.String(128)
DIGEST = sa.String(80)  # "sha256:" + 64 hex digits


class BaseCheckpoint(Record):
    """A registered target or source checkpoint, identified by the hash of its weights."""

    __tablename__ = "base_models"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(NAME, unique=True)
    uri: Mapped[str] = mapped_column(sa.Text)
    architecture: Mapped[str] = mapped_column(sa.String(128))
    tokenizer_fingerprint: Mapped[str | None] = mapped_column(DIGEST)
    fingerprint: Mapped[str] = mapped_column(DIGEST, unique=True)
    # The behaviour suite built when it was registered (suite YAML paths, probe source, sizes,
    # suite_version: skillstore.behaviour); None when registered with --no-general-suite.
    behaviour: Mapped[dict | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Skill(Record):
    """A named capability with its training data and the eval suite that measures it."""

    __tablename__ = "skills"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(NAME, unique=True)
    description: Mapped[str] = mapped_column(sa.Text, default="")
    data_uri: Mapped[str | None] = mapped_column(sa.Text)
    data_sha256: Mapped[str | None] = mapped_column(DIGEST)
    # lm-eval task YAML paths or task names, comma-separated (skillstore.evaluation.suites).
    suite: Mapped[str] = mapped_column(sa.Text)
    # The held-out split made from a plain JSONL (seed, sizes, blob digests of both halves);
    # None when the user brought their own suite or the data has its own test file.
    heldout: Mapped[dict | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class SkillPack(Record):
    """One version of one skill for one base: a compressed delta stored as a blob."""

    __tablename__ = "skill_packs"
    __table_args__ = (
        sa.UniqueConstraint("skill_id", "version"),
        sa.CheckConstraint("version >= 1", name="version_positive"),
        sa.CheckConstraint("size_bytes >= 0", name="size_nonnegative"),
        sa.Index("ix_skill_packs_skill_status_id", "skill_id", "status", "id"),
        sa.Index("ix_skill_packs_status_id", "status", "id"),
        sa.Index("ix_skill_packs_base_id", "base_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    skill_id: Mapped[int] = mapped_column(sa.ForeignKey("skills.id", ondelete="RESTRICT"))
    version: Mapped[int]
    base_id: Mapped[int] = mapped_column(sa.ForeignKey("base_models.id", ondelete="RESTRICT"))
    status: Mapped[PackStatus] = mapped_column(
        enum_column(PackStatus, "pack_status"), default=PackStatus.candidate)
    blob_digest: Mapped[str] = mapped_column(DIGEST, index=True)
    size_bytes: Mapped[int] = mapped_column(sa.BigInteger)
    format_version: Mapped[int]
    compression_ratio: Mapped[float | None]
    codecs: Mapped[dict] = mapped_column(default=dict)  # module type -> codec spec
    method: Mapped[str] = mapped_column(sa.String(32))
    source_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("base_models.id", ondelete="RESTRICT"))
    metrics: Mapped[dict] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    skill: Mapped[Skill] = relationship(lazy="raise")
    base: Mapped[BaseCheckpoint] = relationship(foreign_keys=[base_id], lazy="raise")
    source: Mapped[BaseCheckpoint | None] = relationship(foreign_keys=[source_id], lazy="raise")


class LineageEdge(Record):
    """Child pack -> parent (a pack or a base model); a pack may have several parents."""

    __tablename__ = "lineage_edges"
    __table_args__ = (
        sa.CheckConstraint("(parent_pack_id IS NULL) <> (parent_base_id IS NULL)",
                           name="one_parent"),
        sa.CheckConstraint("child_id <> parent_pack_id", name="no_self_loop"),
        # One edge per (child, parent, kind); partial indexes because NULLs never collide.
        sa.Index("uq_lineage_edges_pack_parent", "child_id", "parent_pack_id", "kind", unique=True,
                 sqlite_where=sa.text("parent_pack_id IS NOT NULL"),
                 postgresql_where=sa.text("parent_pack_id IS NOT NULL")),
        sa.Index("uq_lineage_edges_base_parent", "child_id", "parent_base_id", "kind", unique=True,
                 sqlite_where=sa.text("parent_base_id IS NOT NULL"),
                 postgresql_where=sa.text("parent_base_id IS NOT NULL")),
        sa.Index("ix_lineage_edges_parent_pack_id", "parent_pack_id"),
        sa.Index("ix_lineage_edges_parent_base_id", "parent_base_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    child_id: Mapped[int] = mapped_column(
        sa.ForeignKey("skill_packs.id", ondelete="CASCADE"), index=True)
    parent_pack_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("skill_packs.id", ondelete="RESTRICT"))
    parent_base_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("base_models.id", ondelete="RESTRICT"))
    kind: Mapped[EdgeKind] = mapped_column(enum_column(EdgeKind, "edge_kind"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Job(Record):
    """A queued unit of work (a learning job), with live progress and its resulting pack."""

    __tablename__ = "jobs"
    __table_args__ = (
        sa.CheckConstraint("progress >= 0 AND progress <= 1", name="progress_fraction"),
        sa.Index("ix_jobs_status_id", "status", "id"),
        sa.Index("ix_jobs_base_id_status", "base_id", "status"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(sa.String(32))
    status: Mapped[JobStatus] = mapped_column(
        enum_column(JobStatus, "job_status"), default=JobStatus.queued)
    celery_task_id: Mapped[str | None] = mapped_column(sa.String(255), index=True)
    # What was asked (a LearnRequest's JSON), never written after the job is queued; what the
    # steps produced lives in `job_steps`.
    request: Mapped[dict] = mapped_column(default=dict)
    owner_host: Mapped[str | None] = mapped_column(sa.String(255))  # the worker that holds it
    owner_pid: Mapped[int | None]
    base_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("base_models.id", ondelete="SET NULL"))
    skill_id: Mapped[int | None] = mapped_column(sa.ForeignKey("skills.id", ondelete="SET NULL"))
    stage: Mapped[str | None] = mapped_column(sa.String(64))
    progress: Mapped[float] = mapped_column(default=0.0)
    error: Mapped[str | None] = mapped_column(sa.Text)
    attempts: Mapped[int] = mapped_column(default=0)
    pack_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("skill_packs.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    finished_at: Mapped[datetime | None]

    steps: Mapped[list[JobStep]] = relationship(
        lazy="selectin", order_by="JobStep.id", cascade="all, delete-orphan",
        back_populates="job")

    @property
    def outputs(self) -> dict[str, dict]:
        """stage -> what that step recorded, for the steps that finished."""
        return {step.stage: step.output for step in self.steps}


class JobStep(Record):
    """One finished step of a job: what it produced and how long its library call took."""

    __tablename__ = "job_steps"
    __table_args__ = (sa.UniqueConstraint("job_id", "stage"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(sa.ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    stage: Mapped[str] = mapped_column(sa.String(64))
    output: Mapped[dict] = mapped_column(default=dict)
    seconds: Mapped[float | None]
    attempt: Mapped[int] = mapped_column(default=1)
    finished_at: Mapped[datetime] = mapped_column(default=utcnow)

    job: Mapped[Job] = relationship(lazy="raise", back_populates="steps")


class ModelState(Record):
    """A base model plus an ordered set of packs with scales plus a routing policy."""

    __tablename__ = "model_states"

    id: Mapped[int] = mapped_column(primary_key=True)
    fingerprint: Mapped[str] = mapped_column(DIGEST, unique=True)
    base_id: Mapped[int] = mapped_column(
        sa.ForeignKey("base_models.id", ondelete="RESTRICT"), index=True)
    parent_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("model_states.id", ondelete="SET NULL"))
    router: Mapped[str] = mapped_column(sa.String(32))
    router_config: Mapped[dict] = mapped_column(default=dict)
    router_blob_digest: Mapped[str | None] = mapped_column(DIGEST)
    description: Mapped[str] = mapped_column(sa.Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    members: Mapped[list[StatePack]] = relationship(
        lazy="raise", order_by="StatePack.position", cascade="all, delete-orphan")


class StatePack(Record):
    """One pack of a model state, at a position, with its scale."""

    __tablename__ = "state_packs"
    __table_args__ = (sa.UniqueConstraint("state_id", "pack_id"),)

    state_id: Mapped[int] = mapped_column(
        sa.ForeignKey("model_states.id", ondelete="CASCADE"), primary_key=True)
    position: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    pack_id: Mapped[int] = mapped_column(
        sa.ForeignKey("skill_packs.id", ondelete="RESTRICT"), index=True)
    scale: Mapped[float] = mapped_column(default=1.0)


class BaseHead(Record):
    """The current state of a base; `version` lets racing promotions compare-and-swap."""

    __tablename__ = "base_heads"

    base_id: Mapped[int] = mapped_column(
        sa.ForeignKey("base_models.id", ondelete="CASCADE"), primary_key=True)
    state_id: Mapped[int] = mapped_column(sa.ForeignKey("model_states.id", ondelete="RESTRICT"))
    version: Mapped[int] = mapped_column(default=1)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class EvalResult(Record):
    """One metric of one lm-eval task on one model state; the cache key is unique."""

    __tablename__ = "eval_results"
    __table_args__ = (
        sa.UniqueConstraint("state_id", "suite", "suite_version", "task", "metric"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    state_id: Mapped[int] = mapped_column(sa.ForeignKey("model_states.id", ondelete="CASCADE"))
    skill_id: Mapped[int | None] = mapped_column(  # NULL: the base's general suite
        sa.ForeignKey("skills.id", ondelete="RESTRICT"), index=True)
    suite: Mapped[str] = mapped_column(sa.String(256))
    suite_version: Mapped[str] = mapped_column(sa.String(80))
    task: Mapped[str] = mapped_column(sa.String(256))
    metric: Mapped[str] = mapped_column(sa.String(128))
    value: Mapped[float]
    stderr: Mapped[float | None]
    n: Mapped[int]
    lm_eval_version: Mapped[str] = mapped_column(sa.String(32))
    # Blob of the per-sample outcomes (JSON: doc id -> value), for paired tests across states.
    samples_digest: Mapped[str | None] = mapped_column(DIGEST)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Promotion(Record):
    """Append-only audit of every status change of a pack (creation included)."""

    __tablename__ = "promotions"

    id: Mapped[int] = mapped_column(primary_key=True)
    pack_id: Mapped[int] = mapped_column(
        sa.ForeignKey("skill_packs.id", ondelete="CASCADE"), index=True)
    from_status: Mapped[PackStatus | None] = mapped_column(enum_column(PackStatus, "from_status"))
    to_status: Mapped[PackStatus] = mapped_column(enum_column(PackStatus, "to_status"))
    reason: Mapped[str] = mapped_column(sa.Text, default="")
    report_ref: Mapped[str | None] = mapped_column(sa.Text)
    state_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("model_states.id", ondelete="SET NULL"))
    actor: Mapped[str] = mapped_column(sa.String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Experiment(Record):
    """One experiment spec as queued: its runs are ``experiment_runs``; ``status`` is derived
    from theirs (skillstore.experiments.catalog.refresh_status)."""

    __tablename__ = "experiments"
    __table_args__ = (sa.Index("ix_experiments_name_id", "name", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(NAME)  # the spec's name; one spec may be run many times
    # What was asked (the validated ExperimentSpec's JSON), never written after queueing;
    # what each run produced lives in its row's ``result``.
    spec: Mapped[dict]
    spec_sha256: Mapped[str] = mapped_column(DIGEST)
    base_id: Mapped[int] = mapped_column(
        sa.ForeignKey("base_models.id", ondelete="RESTRICT"), index=True)
    status: Mapped[JobStatus] = mapped_column(
        enum_column(JobStatus, "experiment_status"), default=JobStatus.queued)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]

    runs: Mapped[list[ExperimentRun]] = relationship(
        lazy="selectin", order_by="ExperimentRun.id", cascade="all, delete-orphan",
        back_populates="experiment")


class ExperimentRun(Record):
    """One (method, seed) of an experiment, executed by one worker task."""

    __tablename__ = "experiment_runs"
    __table_args__ = (sa.UniqueConstraint("experiment_id", "method", "seed"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    experiment_id: Mapped[int] = mapped_column(
        sa.ForeignKey("experiments.id", ondelete="CASCADE"), index=True)
    method: Mapped[str] = mapped_column(sa.String(32))
    seed: Mapped[int]
    status: Mapped[JobStatus] = mapped_column(
        enum_column(JobStatus, "run_status"), default=JobStatus.queued)
    error: Mapped[str | None] = mapped_column(sa.Text)
    # Once done: skills, accuracy matrix with n, continual metrics, bytes per skill, timings.
    result: Mapped[dict | None]
    # A learning job or a model state the run made (a graft run's); NULL for methods that
    # train outside the learning pipeline.
    job_id: Mapped[int | None] = mapped_column(sa.ForeignKey("jobs.id", ondelete="SET NULL"))
    state_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("model_states.id", ondelete="SET NULL"))
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    # The worker process that took the run's message (as jobs record theirs), so that the next
    # worker on that host sends the run again if this one dies
    owner_host: Mapped[str | None] = mapped_column(sa.String(255))
    owner_pid: Mapped[int | None]
    # When the run's message was last sent: a queued run sent long ago that no worker claimed
    # may have lost its message with a worker killed before the claim (workers/unclaimed.py)
    sent_at: Mapped[datetime | None]
    # While running: the step the method is in and the fraction of the run done, as the
    # worker last reported them (at most once a second); for progress bars.
    stage: Mapped[str | None] = mapped_column(sa.String(64))
    progress: Mapped[float | None]

    experiment: Mapped[Experiment] = relationship(lazy="raise", back_populates="runs")


class ExperimentPack(Record):
    """A pack an experiment run made (a ``graft`` run's, one per skill): the pack's lineage to
    its experiment. A pack comes from at most one run; the link goes with the run, the pack
    stays in the catalog."""

    __tablename__ = "experiment_packs"

    pack_id: Mapped[int] = mapped_column(
        sa.ForeignKey("skill_packs.id", ondelete="CASCADE"), primary_key=True)
    run_id: Mapped[int] = mapped_column(
        sa.ForeignKey("experiment_runs.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


@sa.event.listens_for(Promotion, "before_update")
@sa.event.listens_for(Promotion, "before_delete")
def _audit_is_append_only(mapper, connection, target: Promotion) -> None:
    raise RuntimeError(f"promotion audit row {target.id} is append-only")
