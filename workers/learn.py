"""The learning job's Celery tasks: thin wrappers that open a session, run one step and commit."""

from __future__ import annotations

import logging
import os
import socket
import time

import psutil
import sqlalchemy as sa
from celery import shared_task
from celery.exceptions import Ignore
from celery.signals import task_received, worker_process_init, worker_ready
from sqlalchemy.orm import Session

from skillstore.catalog import JobStatus, get_job, open_catalog
from skillstore.catalog.db import sqlite_path
from skillstore.errors import DatabaseUnavailableError, PromotionConflictError, SkillstoreError
from skillstore.jobqueue import LEARN_TASKS
from skillstore.pipeline import STAGES, STEPS, JobCancelled, WaitForEarlier, lifecycle
from skillstore.pipeline.workdir import sweep_scratch
from skillstore.settings import get_settings

log = logging.getLogger(__name__)

# Retried by name, a few times: the database or broker blinked, or another promotion won a race.
TRANSIENT = (sa.exc.OperationalError, DatabaseUnavailableError, PromotionConflictError,
             ConnectionError, TimeoutError)
MAX_TRANSIENT_RETRIES = 3
RETRY_BACKOFF_S = 2
# A later job on the same base re-checks this often whether the earlier ones finished.
WAIT_FOR_EARLIER_S = 2
WAIT_RETRIES = 1_000_000
PROGRESS_EVERY_S = 1.0
_per_process: dict[int, dict] = {}  # engines are never shared across a fork


@worker_process_init.connect
def _preload_ml_stack(**_) -> None:
    """Import torch, transformers and lm-eval as a pool process starts, not inside the first job:
    they take seconds to import, and a job should pay only for its own work. matplotlib is
    here for the same reason: the gate step draws the report's heatmap with it."""
    import lm_eval.evaluator  # noqa: F401
    import matplotlib
    import torch  # noqa: F401
    import transformers  # noqa: F401

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401


def catalog():
    """One opened catalog per worker process."""
    mine = _per_process.setdefault(os.getpid(), {})
    if "catalog" not in mine:
        mine["catalog"] = open_catalog(get_settings())
    return mine["catalog"]


def progress_engine() -> sa.Engine:
    """A second engine whose writes give up at once when the step's transaction holds the lock:
    progress is best effort and must never stall the work it reports on."""
    mine = _per_process.setdefault(os.getpid(), {})
    if "progress" not in mine:
        url = catalog().settings.database_url
        mine["progress"] = (sa.create_engine(url, connect_args={"timeout": 0.2})
                            if sqlite_path(url) is not None else catalog().engine)
    return mine["progress"]


def _reporter(job_id: int, stage: str):
    index, last = STAGES.index(stage), [0.0]

    def report(sub_stage: str, fraction: float) -> None:
        now = time.monotonic()
        if now - last[0] < PROGRESS_EVERY_S and fraction < 1.0:
            return
        last[0] = now
        try:
            with Session(progress_engine()) as s:
                lifecycle.set_progress(s, job_id, stage, (index + fraction) / len(STAGES))
                s.commit()
        except sa.exc.OperationalError:
            pass  # the step's own transaction holds the lock; the next report will land

    return report


def _begin(task, stage: str, job_id: int) -> bool:
    """Mark the job running at this stage; False when there is nothing to do."""
    with catalog().session() as s:
        try:
            return lifecycle.begin(s, job_id, stage, socket.gethostname(), os.getpid()) is not None
        except WaitForEarlier:  # jobs on one base learn in order
            raise task.retry(countdown=WAIT_FOR_EARLIER_S, max_retries=WAIT_RETRIES) from None


def _fail(job_id: int, stage: str, message: str) -> None:
    with catalog().session() as s:
        lifecycle.fail(s, get_job(s, job_id, lock=True), message, stage=stage)


def _retry_or_fail(task, stage: str, job_id: int, exc: Exception, transient: int):
    """Retry a transient error a few times, then record it on the job. Counted in the task's
    own ``transient`` argument: ``request.retries`` also counts the waits for earlier jobs."""
    if transient < MAX_TRANSIENT_RETRIES:
        log.warning("job %s %s: transient error, retrying: %s", job_id, stage, exc)
        # Celery's own limit is lifted (None would mean the task default), ours applies.
        raise task.retry(exc=exc, countdown=RETRY_BACKOFF_S * (transient + 1),
                         max_retries=WAIT_RETRIES, kwargs={"transient": transient + 1}) from None
    _fail(job_id, stage, f"{stage} failed after {transient} retries: {exc}")
    raise Ignore() from None


def run_step(task, stage: str, job_id: int, transient: int = 0) -> dict:
    """Run one step of a job exactly as the library defines it, with the job row kept honest."""
    try:  # the database may be away when the step begins, too
        if not _begin(task, stage, job_id):
            return {"job_id": job_id, "stage": stage, "skipped": True}
    except TRANSIENT as exc:
        _retry_or_fail(task, stage, job_id, exc, transient)
    settings = catalog().settings
    try:
        with catalog().session() as s:
            started = time.perf_counter()
            out = STEPS[stage](s, job_id, settings, _reporter(job_id, stage))
            job = get_job(s, job_id)
            lifecycle.record_seconds(s, job, stage, time.perf_counter() - started)
            lifecycle.step_done(s, job_id, stage)
        return {"job_id": job_id, "stage": stage, "out": out}
    except JobCancelled:
        return {"job_id": job_id, "stage": stage, "cancelled": True}
    except TRANSIENT as exc:
        _retry_or_fail(task, stage, job_id, exc, transient)
    except SkillstoreError as exc:
        _fail(job_id, stage, str(exc))
        raise Ignore() from None
    except Exception as exc:  # out of memory, a library bug: recorded on the job, never retried
        log.exception("job %s failed in %s", job_id, stage)
        _fail(job_id, stage, f"{type(exc).__name__}: {exc}")
        raise Ignore() from None


TASK_OPTIONS = {"bind": True, "acks_late": True, "reject_on_worker_lost": True,
                "max_retries": MAX_TRANSIENT_RETRIES}


def _step_task(stage: str):
    """The Celery task of one stage: a thin wrapper that runs the library's step."""
    def step(self, job_id: int, transient: int = 0) -> dict:
        return run_step(self, stage, job_id, transient)

    step.__name__ = step.__qualname__ = stage
    step.__doc__ = f"Run the {stage!r} step of a learning job ({STEPS[stage].__module__})."
    return shared_task(name=LEARN_TASKS[stage], **TASK_OPTIONS)(step)


TASKS = {stage: _step_task(stage) for stage in STAGES}


def process_alive(pid: int) -> bool:
    """Whether a process runs; a zombie (killed, not yet reaped by whoever inherited it) is dead."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


@task_received.connect
def claim_received(request=None, **_kwargs) -> None:
    """A queued job belongs to this worker from the moment its message arrives, so that a worker
    killed before a pool process begins the step leaves a job that resume_orphans finds (Redis
    keeps that message unacknowledged for the whole visibility timeout). Best effort: a worker
    killed before the claim is written leaves an unclaimed job, which `workers.unclaimed`
    finds."""
    if request is None or request.name not in LEARN_TASKS.values() or not request.args:
        return
    try:
        with Session(progress_engine()) as s:
            job = get_job(s, request.args[0])
            if job.status == JobStatus.queued:
                lifecycle.set_owner(job, socket.gethostname(), os.getpid())
                s.commit()
    except (sa.exc.OperationalError, SkillstoreError) as exc:
        log.warning("cannot claim job %s: %s", request.args[0], exc)


@worker_ready.connect
def resume_orphans(**_kwargs) -> None:
    """A job whose worker died on this host (SIGKILL, power cut) is sent again from its stage.

    Brokers that keep unacknowledged messages (Redis, RabbitMQ) redeliver on their own; the
    embedded SQL broker loses a message its consumer took, so this sweep is what finishes
    the job there. The steps are idempotent, so a job sent twice still finishes once.
    """
    try:
        cat = catalog()
        host = socket.gethostname()
        with cat.session() as s:
            for folder in sweep_scratch(s, cat.settings, host, process_alive):
                log.warning("removed %s: its job's worker is gone", folder)
            for path in cat.blobs.sweep_staging(host, process_alive):
                log.warning("removed the staged write %s: its writer is gone", path)
            for job in lifecycle.resume_orphans(s, cat.settings, host, process_alive):
                log.warning("resuming job %s from %s: its worker is gone", job.id, job.stage)
    except SkillstoreError as exc:
        log.warning("cannot look for orphaned jobs: %s", exc)
