"""What every pipeline step shares: the job row, its recorded outputs, paths, progress and cancel."""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.orm import Session, object_session

from ..blobstore import BlobStore, open_blob_store
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


def _fresh_params(job: Job) -> dict:
    """A copy of the job's params as committed now, with its row locked until the caller's
    transaction ends: two attempts of one job (a resumed chain beside a redelivered one) would
    otherwise each write back the copy they read at their start and lose the other's output."""
    session = object_session(job)
    if session is None or job.id is None:
        return json.loads(json.dumps(job.params or {}))
    current = session.scalar(sa.select(Job.params).where(Job.id == job.id).with_for_update())
    return json.loads(json.dumps(current or {}))


def record_output(job: Job, stage: str, value: dict) -> None:
    """Store a step's output on the job row (a new dict, so the JSON column sees the change)."""
    params = _fresh_params(job)
    params.setdefault("out", {})[stage] = value
    job.params = params


def record_timing(job: Job, stage: str, seconds: float) -> None:
    """Seconds spent inside a step's library function (the benchmark subtracts them)."""
    params = _fresh_params(job)
    params.setdefault("timings", {})[stage] = round(seconds, 4)
    job.params = params


def set_owner(job: Job, host: str, pid: int) -> None:
    params = json.loads(json.dumps(job.params or {}))
    params["owner"] = {"host": host, "pid": pid}
    job.params = params


def blobs(settings: Settings) -> BlobStore:
    return open_blob_store(settings)


def work_dir(settings: Settings, *parts: str) -> Path:
    path = settings.home.joinpath("work", *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


SCRATCH_NAME = re.compile(r"job(\d+)-[0-9a-f]{8}")


def scratch(settings: Settings, job_id: int) -> Path:
    """A fresh private folder for one attempt of one job (never shared, never reused)."""
    return work_dir(settings, "tmp", f"job{job_id}-{uuid.uuid4().hex[:8]}")


def sweep_scratch(session: Session, settings: Settings, host: str,
                  alive: Callable[[int], bool]) -> list[Path]:
    """Remove the scratch folders that a killed attempt left behind, and return them.

    A folder is kept only while its job runs under a live process (on another host, or on this
    one with ``alive(pid)`` true): a SIGKILL mid-save leaves a partial checkpoint that no later
    attempt reuses, because every attempt makes a fresh folder.
    """
    root = settings.home / "work" / "tmp"
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    for folder in sorted(root.iterdir()):
        match = SCRATCH_NAME.fullmatch(folder.name)
        if match is None:
            continue
        job = session.get(Job, int(match[1]))
        if job is not None and job.status == JobStatus.running:
            owner = (job.params or {}).get("owner") or {}
            if owner.get("host") != host or (owner.get("pid") and alive(int(owner["pid"]))):
                continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


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
