"""Job rows: create, look up, list and count. A job's life (begin, fail, cancel, retry) is in
skillstore.pipeline.lifecycle."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..errors import ConfigError, NotFoundError
from .models import Job
from .schema import JobStatus, created_window, fits_row_id


def create_job(session: Session, *, kind: str, request: dict, base_id: int | None = None,
               skill_id: int | None = None) -> Job:
    """A queued job; the caller sends the Celery task and stores its id with `attach_task`."""
    job = Job(kind=kind, request=request, base_id=base_id, skill_id=skill_id,
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


def list_jobs(session: Session, *, status: JobStatus | str | None = None,
              base_id: int | None = None, skill_id: int | None = None,
              created_after: datetime | None = None, created_before: datetime | None = None,
              limit: int = 50, offset: int = 0) -> list[Job]:
    """Jobs, newest first, filtered by status, base, skill and creation time [after, before)."""
    where = _job_filters(status, base_id, skill_id, created_after, created_before)
    q = sa.select(Job).where(*where)
    return list(session.scalars(q.order_by(Job.id.desc()).limit(limit).offset(offset)))


def count_jobs(session: Session, *, status: JobStatus | str | None = None,
               base_id: int | None = None, skill_id: int | None = None,
               created_after: datetime | None = None,
               created_before: datetime | None = None) -> int:
    """How many jobs `list_jobs` pages through with the same filters."""
    where = _job_filters(status, base_id, skill_id, created_after, created_before)
    return session.scalar(sa.select(sa.func.count()).select_from(Job).where(*where))


def attach_task(session: Session, job: Job, celery_task_id: str) -> None:
    job.celery_task_id = celery_task_id
    session.flush()
