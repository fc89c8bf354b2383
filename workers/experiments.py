"""The experiment run's Celery task: a thin wrapper that begins a run, executes its method
outside any transaction, and records the result or the error."""

from __future__ import annotations

import logging
import os
import socket
import time
from functools import partial

import sqlalchemy as sa
from celery import shared_task
from celery.signals import task_received, worker_ready
from kombu.exceptions import OperationalError
from sqlalchemy.orm import Session

from skillstore.errors import SkillstoreError
from skillstore.experiments.catalog import (
    RunCancelled,
    begin_run,
    claim_run,
    fail_run,
    finish_run,
    report_progress,
)
from skillstore.experiments.queue import resume_orphan_runs
from skillstore.jobqueue import EXPERIMENT_RUN_TASK

from .learn import (
    MAX_TRANSIENT_RETRIES,
    RETRY_BACKOFF_S,
    TRANSIENT,
    catalog,
    process_alive,
    progress_engine,
)

log = logging.getLogger(__name__)
CHECK_EVERY_S = 1.0


@task_received.connect
def claim_received(request=None, **_kwargs) -> None:
    """A queued run belongs to this worker from the moment its message arrives (as a job
    does, `workers.learn.claim_received`), so that a worker killed while the run goes on
    leaves a run that `resume_orphans` finds."""
    if request is None or request.name != EXPERIMENT_RUN_TASK or not request.args:
        return
    try:
        with Session(progress_engine()) as s:
            claim_run(s, request.args[0], socket.gethostname(), os.getpid())
            s.commit()
    except sa.exc.OperationalError as exc:
        log.warning("cannot claim experiment run %s: %s", request.args[0], exc)


@worker_ready.connect
def resume_orphans(**_kwargs) -> None:
    """An experiment run whose worker died on this host is sent again, from the base."""
    try:
        cat = catalog()
        with cat.session() as s:
            for run in resume_orphan_runs(s, cat.settings, socket.gethostname(), process_alive):
                log.warning("sent experiment run %s again: its worker is gone", run.id)
    except (SkillstoreError, sa.exc.OperationalError, OperationalError) as exc:
        log.warning("cannot look for orphaned experiment runs: %s", exc)


def _checker(run_id: int):
    """progress(stage, fraction) for the executor: at most once a second, it records the
    run's step and fraction done, and raises RunCancelled when the run was cancelled (best
    effort when the DB is busy)."""
    last = [0.0]

    def check(stage: str, fraction: float) -> None:
        now = time.monotonic()
        if now - last[0] < CHECK_EVERY_S:
            return
        last[0] = now
        try:
            with Session(progress_engine()) as s:
                stopped = report_progress(s, run_id, stage, fraction)
                s.commit()
        except sa.exc.OperationalError:
            return
        if stopped:
            raise RunCancelled(f"Experiment run {run_id} was stopped during {stage}.")

    return check


def _record(write, run_id: int, *args) -> None:
    """Write a run's outcome, retrying a blinking database in place: the work is done."""
    for attempt in range(MAX_TRANSIENT_RETRIES + 1):
        try:
            with catalog().session() as s:
                write(s, run_id, *args)
            return
        except TRANSIENT:
            if attempt == MAX_TRANSIENT_RETRIES:
                raise
            time.sleep(RETRY_BACKOFF_S * (attempt + 1))


@shared_task(name=EXPERIMENT_RUN_TASK, bind=True, acks_late=True, reject_on_worker_lost=True,
             max_retries=MAX_TRANSIENT_RETRIES)
def run(self, run_id: int) -> dict:
    """Execute one (method, seed) run of an experiment (skillstore.experiments.methods)."""
    from skillstore.experiments.methods import execute, run_inputs

    cat = catalog()
    try:
        with cat.session() as s:
            if begin_run(s, run_id) is None:
                return {"run_id": run_id, "skipped": True}
        with cat.session() as s:
            inputs = run_inputs(s, cat.blobs, run_id)
    except TRANSIENT as exc:  # begun again on the retry: a running run may start over
        raise self.retry(exc=exc, countdown=RETRY_BACKOFF_S) from None
    except Exception as exc:  # noqa: BLE001 - recorded on the run, never left running
        return _failed(run_id, exc)
    try:
        result = execute(inputs, _checker(run_id))
    except RunCancelled:
        return {"run_id": run_id, "cancelled": True}
    except Exception as exc:  # noqa: BLE001 - out of memory, a library bug: never retried
        return _failed(run_id, exc)
    try:  # a graft run's packs enter the catalog with its result
        _record(partial(finish_run, blobs=cat.blobs), run_id, result)
    except SkillstoreError as exc:  # a pack file damaged or gone since the run stored it
        return _failed(run_id, exc)
    return {"run_id": run_id, "succeeded": True}


def _failed(run_id: int, exc: Exception) -> dict:
    """Record the error on the run (one line; the type too when it is not ours)."""
    if isinstance(exc, SkillstoreError):
        message = str(exc)
    else:
        log.exception("experiment run %s failed", run_id)
        message = f"{type(exc).__name__}: {exc}"
    _record(fail_run, run_id, message)
    return {"run_id": run_id, "failed": message}
