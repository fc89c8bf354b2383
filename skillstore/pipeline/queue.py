"""Queueing a learning job: check every parameter at `learn` time, then send the task chain by name."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..catalog import JobStatus, attach_task, create_job, fail_job, get_base, get_job, get_skill
from ..catalog.models import Job
from ..errors import ConfigError, JobError, NotFoundError, unknown_name
from ..settings import Settings

KIND = "learn"
STAGES = ("prepare", "train", "compress", "evaluate", "gate")
METHODS = ("sft", "distill", "dpo")
START_FROM = ("base", "current")
TASK_PREFIX = "workers.learn."


def _check_policy(policy: str, budget: float | None) -> str:
    from ..packs import load_policy

    load_policy(policy, budget=budget)  # a preset or a JSON file; anything else is ConfigError
    return str(Path(policy).absolute()) if Path(policy).is_file() else policy


def _check_data(skill) -> None:
    if not skill.data_uri and not skill.data_sha256:
        raise ConfigError(f"Skill {skill.name!r} has no training data; register it with "
                          "`skillstore skill add NAME --data FILE`.")


def _check_source(source) -> None:
    from ..fingerprint import fingerprint_tokenizer

    if not Path(source.uri).is_dir():
        raise NotFoundError(f"Source model {source.name!r} is not on this machine ({source.uri}); "
                            "register a local checkpoint folder.")
    fingerprint_tokenizer(source.uri)  # NotFoundError naming the folder when it has no tokenizer


def queue_learning_job(session: Session, settings: Settings, skill: str, base: str, *,
                       source: str | None = None, method: str = "sft", policy: str = "balanced",
                       start_from: str = "base", budget: float | None = None,
                       train: dict | None = None, tune_steps: int = 0,
                       options: dict | None = None, send: bool = True) -> int:
    """Validate a learning job, store it as queued, send its chain and return the job id.

    Every check runs before anything is written or sent: an unknown skill or base, a method or
    start point that does not exist, a policy that does not parse, a distillation without a
    source, or a source with no tokenizer each raise a one-line SkillstoreError.
    """
    if method not in METHODS:
        raise unknown_name("learning method", method, METHODS)
    if not isinstance(tune_steps, int) or tune_steps < 0:
        raise ConfigError(f"tune_steps must be a whole number of steps, 0 or more; got {tune_steps!r}.")
    if start_from not in START_FROM:
        raise unknown_name("start point", start_from, START_FROM)
    skill_row, base_row = get_skill(session, skill), get_base(session, base)
    _check_data(skill_row)
    policy = _check_policy(policy, budget)
    source_row = None
    if method in ("distill", "dpo") and source is None:
        raise ConfigError(f"Method {method!r} learns from a source model; pass --source NAME.")
    if source is not None:
        source_row = get_base(session, source)
        _check_source(source_row)
    if train:
        from ..training.sft import SFTConfig

        try:
            SFTConfig(**train)
        except ValueError as exc:
            raise ConfigError(f"Training options {train} are invalid: "
                              f"{str(exc).splitlines()[1:3]}") from None
    params = {"skill": skill_row.name, "base": base_row.name, "method": method, "policy": policy,
              "budget": budget, "tune_steps": tune_steps,
              "start_from": start_from, "source": source_row.name if source_row else None,
              "source_id": source_row.id if source_row else None, "train": dict(train or {}),
              "options": dict(options or {}), "out": {}}
    job = create_job(session, kind=KIND, params=params, base_id=base_row.id, skill_id=skill_row.id)
    session.commit()  # the row exists before any worker can look for it
    if send:
        send_chain(session, settings, job, STAGES[0])
    return job.id


def send_chain(session: Session, settings: Settings, job: Job, from_stage: str) -> str:
    """Send the remaining steps of a job as one Celery chain of immutable signatures."""
    from celery import chain

    from ..jobqueue import producer

    if from_stage not in STAGES:
        raise unknown_name("stage", from_stage, STAGES)
    from kombu.exceptions import OperationalError

    app = producer(settings)
    steps = STAGES[STAGES.index(from_stage):]
    sigs = [app.signature(TASK_PREFIX + s, args=(job.id,), immutable=True) for s in steps]
    try:
        result = chain(*sigs).apply_async(retry_policy={"max_retries": 2})
    except OperationalError as exc:
        fail_job(session, job, f"could not reach the broker: {exc}", stage=from_stage)
        session.commit()
        raise JobError(f"Job {job.id} could not be sent to the broker at "
                       f"{settings.broker_url.split('@')[-1]!r} ({exc}); start the broker or fix "
                       f"SKILLSTORE_BROKER_URL, then `skillstore job retry {job.id}`.") from None
    attach_task(session, job, result.id)
    session.commit()
    return result.id


def cancel(session: Session, settings: Settings, job_id: int | str) -> Job:
    """Mark a job cancelled; running steps notice at their next progress report and stop."""
    from ..catalog import cancel_job

    job = get_job(session, job_id, lock=True)
    cancel_job(session, job)
    session.commit()
    return job


def retry(session: Session, settings: Settings, job_id: int | str) -> Job:
    """Queue a failed or cancelled job again from the stage it stopped at."""
    job = get_job(session, job_id, lock=True)
    if job.status not in (JobStatus.failed, JobStatus.cancelled):
        raise JobError(f"Job {job.id} is {job.status.value}; only failed or cancelled jobs "
                       "can be retried.")
    stage = job.stage if job.stage in STAGES else STAGES[0]
    job.status, job.error, job.finished_at = JobStatus.queued, None, None
    session.flush()
    send_chain(session, settings, job, stage)
    return job


def earlier_unfinished(session: Session, job: Job) -> Job | None:
    """The oldest unfinished learning job on the same base queued before this one, if any."""
    return session.scalar(
        sa.select(Job).where(Job.kind == KIND, Job.base_id == job.base_id, Job.id < job.id,
                             Job.status.in_([JobStatus.queued, JobStatus.running]))
        .order_by(Job.id).limit(1))


def orphaned_jobs(session: Session, host: str, alive) -> list[Job]:
    """Unfinished jobs whose recorded worker process on ``host`` is gone (``alive(pid)`` is
    False): running ones, and queued ones whose message a worker took before it died."""
    rows = session.scalars(sa.select(Job).where(
        Job.kind == KIND, Job.status.in_([JobStatus.queued, JobStatus.running])))
    out = []
    for job in rows:
        owner = (job.params or {}).get("owner") or {}
        if owner.get("host") == host and owner.get("pid") and not alive(int(owner["pid"])):
            out.append(job)
    return out
