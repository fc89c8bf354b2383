"""Where a job's steps work: the blob store, private scratch folders, and progress sub-ranges."""

from __future__ import annotations

import re
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from sqlalchemy.orm import Session

from ..blobstore import BlobStore, open_blob_store
from ..catalog.models import Job
from ..catalog.schema import JobStatus
from ..settings import Settings
from .lifecycle import Progress


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
            if job.owner_host != host or (job.owner_pid and alive(job.owner_pid)):
                continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


def scaled(progress: Progress | None, stage: str, lo: float, hi: float) -> Progress:
    """A callback reporting a sub-task's fraction as the range [lo, hi] of ``stage``."""
    def report(_sub: str, fraction: float) -> None:
        if progress is not None:
            progress(stage, lo + (hi - lo) * min(1.0, max(0.0, float(fraction))))
    return report
