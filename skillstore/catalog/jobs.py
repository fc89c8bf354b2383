"""Job rows: queue, start, report progress, finish, fail, cancel; a job's state lives here."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..errors import ConfigError, JobError, NotFoundError
from .models import Job
from .schema import JobStatus, created_window, fits_row_id, utcnow


def create_job(session: Session, *, kind: str, params: dict, base_id: int | None = None,
               skill_id: int | None = None) -> Job:
    """A queued job; the caller sends the Celery task and stores its id with `attach_task`."""
    job = Job(kind=kind, params=params, base_id=base_id, skill_id=skill_id,
              status=JobStatus.queued, progress=0.0, attempts=0)
    session.add(job)
    session.flush()
    return job


def get_job(session: Session, job_id: int | str, *, lock: bool = False) -> Job:
    """A job by id; `lock` takes a row lock (FOR UPDATE on PostgreSQL) for status changes."""
    if not str(job_id).isdigit():
        raise ConfigError(f"{job_id!r} is not a job id; job ids are numbers.")
    q = sa.select(Job).where(Job.id == int(job_id))
    job = session.scalar(q.with_for_update() if lock else q) if fits_row_id(job_id) else None
    if job is None:
        raise NotFoundError(f"No job with id {job_id}; list them with `skillstore job list`.")
    return job


def _job_filters(status: JobStatus | str | None, base_id: int | None, skill_id: int | None,
                 created_after: datetime | None, created_before: datetime | None) -> list:
    where = []
    if status is not None:
        where.append(Job.status == JobStatus(status))
    if base_id is not None:
        where.append(Job.base_id == base_id)
    if skill_id is not None:
        where.append(Job.skill_id == skill_id)
    where += created_window(Job.created_at, created_after, created_before)
    return where


def list_jobs(session: Session, *, status: JobStatus | str | None = None, base_id: int | None = None,
              skill_id: int | None = None, created_after: datetime | None = None,
              created_before: datetime | None = None, limit: int = 50, offset: int = 0) -> list[Job]:
    """Jobs, newest first, filtered by status, base, skill and creation time [after, before)."""
    where = _job_filters(status, base_id, skill_id, created_after, created_before)
    q = sa.select(Job).where(*where)
    return list(session.scalars(q.order_by(Job.id.desc()).limit(limit).offset(offset)))


def count_jobs(session: Session, *, status: JobStatus | str | None = None, base_id: int | None = None,
               skill_id: int | None = None, created_after: datetime | None = None,
               created_before: datetime | None = None) -> int:
    """How many jobs `list_jobs` pages through with the same filters."""
    where = _job_filters(status, base_id, skill_id, created_after, created_before)
    return session.scalar(sa.select(sa.func.count()).select_from(Job).where(*where))


def attach_task(session: Session, job: Job, celery_task_id: str) -> None:
    job.celery_task_id = celery_task_id
    session.flush()


def start_job(session: Session, job: Job, stage: str) -> None:
    """Mark a job running (again): one more attempt, at `stage`."""
    if job.status in (JobStatus.cancelled, JobStatus.succeeded):
        raise JobError(f"Job {job.id} is {job.status.value}; it cannot start again.")
    job.status = JobStatus.running
    job.attempts += 1
    job.stage = stage
    job.error = None
    job.started_at = job.started_at or utcnow()
    session.flush()


def set_progress(session: Session, job: Job, stage: str, fraction: float) -> None:
    """Record how far a running job is: a stage name and a fraction in [0, 1]."""
    job.stage = stage
    job.progress = min(1.0, max(0.0, float(fraction)))
    session.flush()


def finish_job(session: Session, job: Job, *, pack_id: int | None = None) -> None:
    job.status = JobStatus.succeeded
    job.progress = 1.0
    if pack_id is not None:
        job.pack_id = pack_id
    job.finished_at = utcnow()
    session.flush()


def fail_job(session: Session, job: Job, error: str, *, stage: str | None = None) -> None:
    """Mark a job failed with a one-line error and the stage it failed in."""
    job.status = JobStatus.failed
    job.error = error.strip().splitlines()[0] if error.strip() else "failed"
    if stage:
        job.stage = stage
    job.finished_at = utcnow()
    session.flush()


def cancel_job(session: Session, job: Job) -> None:
    if JobStatus(job.status).finished:
        raise JobError(f"Job {job.id} already {job.status.value}; nothing to cancel.")
    job.status = JobStatus.cancelled
    job.finished_at = utcnow()
    session.flush()
