"""What every pipeline step shares: the job row, its recorded outputs, paths, progress and cancel."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from sqlalchemy.orm import Session

from ..blobstore import BlobStore
from ..catalog import JobStatus, get_job
from ..catalog.models import Job
from ..errors import JobError
from ..settings import Settings

# progress(stage, fraction) -> None; it raises JobCancelled when the job was cancelled meanwhile.
Progress = Callable[[str, float], None]


class JobCancelled(JobError):
    """The job was cancelled while a step ran; the step stops and writes nothing."""


def load_job(session: Session, job_id: int) -> Job:
    return get_job(session, job_id)


def is_stopped(job: Job) -> bool:
    """A cancelled or failed job runs no more steps; a succeeded one has nothing left to do."""
    return JobStatus(job.status).finished


def output(job: Job, stage: str) -> dict | None:
    """What a finished step recorded on the job, or None when it has not finished."""
    return ((job.params or {}).get("out") or {}).get(stage)


def record_output(job: Job, stage: str, value: dict) -> None:
    """Store a step's output on the job row (a new dict, so the JSON column sees the change)."""
    params = json.loads(json.dumps(job.params or {}))
    params.setdefault("out", {})[stage] = value
    job.params = params


def record_timing(job: Job, stage: str, seconds: float) -> None:
    """Seconds spent inside a step's library function (the benchmark subtracts them)."""
    params = json.loads(json.dumps(job.params or {}))
    params.setdefault("timings", {})[stage] = round(seconds, 4)
    job.params = params


def set_owner(job: Job, host: str, pid: int) -> None:
    params = json.loads(json.dumps(job.params or {}))
    params["owner"] = {"host": host, "pid": pid}
    job.params = params


def blobs(settings: Settings) -> BlobStore:
    return BlobStore(settings.blob_url)


def work_dir(settings: Settings, *parts: str) -> Path:
    path = settings.home.joinpath("work", *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def scratch(settings: Settings, job_id: int) -> Path:
    """A fresh private folder for one attempt of one job (never shared, never reused)."""
    return work_dir(settings, "tmp", f"job{job_id}-{uuid.uuid4().hex[:8]}")


def publish_dir(tmp: Path, final: Path) -> Path:
    """Move a finished folder to its content-addressed name atomically; an existing copy wins."""
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.is_dir():
        shutil.rmtree(tmp, ignore_errors=True)
        return final
    try:
        os.replace(tmp, final)
    except OSError:  # another attempt published the same content first
        shutil.rmtree(tmp, ignore_errors=True)
        if not final.is_dir():
            raise
    return final


def scaled(progress: Progress | None, stage: str, lo: float, hi: float) -> Progress:
    """A callback reporting a sub-task's fraction as the range [lo, hi] of ``stage``."""
    def report(_sub: str, fraction: float) -> None:
        if progress is not None:
            progress(stage, lo + (hi - lo) * min(1.0, max(0.0, float(fraction))))
    return report
