"""Experiment rows: create one from a spec with its planned runs, look up, list, cancel, and
every status change of a run (a finished graft run's packs enter the catalog with it); an
experiment's status is derived from its runs'."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..catalog import get_base
from ..catalog.models import Experiment, ExperimentRun
from ..catalog.schema import JobStatus, fits_row_id, utcnow
from ..errors import JobError, NotFoundError
from .run_packs import register_run_packs, register_run_state
from .spec import ExperimentSpec

UNFINISHED = (JobStatus.queued, JobStatus.running)


class RunCancelled(JobError):
    """The run was cancelled while it ran; it stops and writes nothing."""


def spec_digest(doc: dict) -> str:
    """sha256 of the spec's JSON with sorted keys: the same spec, the same digest."""
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def create_experiment(session: Session, spec: ExperimentSpec) -> Experiment:
    """A queued experiment with one queued run per (method, seed) of ``spec.runs()``; the
    caller checks the spec (check_spec, methods.check_runnable) and sends the runs."""
    base = get_base(session, spec.base)
    doc = spec.as_json()
    experiment = Experiment(name=spec.name, spec=doc, spec_sha256=spec_digest(doc),
                            base_id=base.id, status=JobStatus.queued)
    experiment.runs = [ExperimentRun(method=m, seed=s, status=JobStatus.queued)
                       for m, s in spec.runs()]
    session.add(experiment)
    session.flush()
    return experiment


def get_experiment(session: Session, ref: int | str) -> Experiment:
    """An experiment by id, or by name (the newest of that name)."""
    text = str(ref)
    if text.isdigit():
        found = session.get(Experiment, int(text)) if fits_row_id(text) else None
    else:
        found = session.scalar(sa.select(Experiment).where(Experiment.name == text)
                               .order_by(Experiment.id.desc()).limit(1))
    if found is None:
        raise NotFoundError(f"No experiment {text!r}; list them with `skillstore experiment "
                            "list`.")
    return found


def list_experiments(session: Session, *, status: JobStatus | str | None = None,
                     limit: int = 50, offset: int = 0) -> list[Experiment]:
    """Experiments, newest first, optionally of one status."""
    q = sa.select(Experiment)
    if status is not None:
        q = q.where(Experiment.status == JobStatus(status))
    return list(session.scalars(q.order_by(Experiment.id.desc()).limit(limit).offset(offset)))


def count_experiments(session: Session, *, status: JobStatus | str | None = None) -> int:
    q = sa.select(sa.func.count()).select_from(Experiment)
    if status is not None:
        q = q.where(Experiment.status == JobStatus(status))
    return session.scalar(q)


def derived_status(statuses: Sequence[JobStatus]) -> JobStatus:
    """An experiment's status from its runs': queued until one starts, running while any is
    unfinished, then succeeded (all did), failed (any did; the others went on) or cancelled."""
    statuses = [JobStatus(s) for s in statuses]
    if not statuses or all(s == JobStatus.queued for s in statuses):
        return JobStatus.queued
    if any(s in UNFINISHED for s in statuses):
        return JobStatus.running
    if all(s == JobStatus.succeeded for s in statuses):
        return JobStatus.succeeded
    if JobStatus.failed in statuses:
        return JobStatus.failed
    return JobStatus.cancelled


def refresh_status(session: Session, experiment_id: int) -> Experiment:
    """Write the experiment's status derived from its runs (and when it finished)."""
    session.flush()
    statuses = session.scalars(sa.select(ExperimentRun.status)
                               .where(ExperimentRun.experiment_id == experiment_id)).all()
    experiment = session.get(Experiment, experiment_id)
    status = derived_status(statuses)
    if status != experiment.status:
        experiment.status = status
        experiment.finished_at = utcnow() if status.finished else None
    session.flush()
    return experiment


def cancel_experiment(session: Session, ref: int | str) -> Experiment:
    """Cancel every queued or running run; a running one stops at its next progress check.
    Finished runs keep their status and result."""
    experiment = get_experiment(session, ref)
    now = utcnow()
    done = session.execute(
        sa.update(ExperimentRun)
        .where(ExperimentRun.experiment_id == experiment.id,
               ExperimentRun.status.in_(UNFINISHED))
        .values(status=JobStatus.cancelled, finished_at=now))
    if done.rowcount == 0:
        raise JobError(f"Experiment {experiment.id} is {JobStatus(experiment.status).value}; "
                       "nothing to cancel.")
    session.expire_all()  # the runs just written, wherever they are loaded
    return refresh_status(session, experiment.id)


def get_run(session: Session, run_id: int, *, lock: bool = False) -> ExperimentRun:
    q = sa.select(ExperimentRun).where(ExperimentRun.id == run_id)
    run = session.scalar(q.with_for_update() if lock else q)
    if run is None:
        raise NotFoundError(f"No experiment run with id {run_id}; show the experiment's runs "
                            "with `skillstore experiment show ID`.")
    return run


def begin_run(session: Session, run_id: int) -> ExperimentRun | None:
    """Mark a run running; None when it is finished or cancelled (nothing to do). A run found
    running was redelivered after its worker died: it starts again from the base."""
    run = get_run(session, run_id, lock=True)
    if JobStatus(run.status).finished:
        return None
    run.status, run.error, run.started_at = JobStatus.running, None, utcnow()
    run.stage, run.progress = None, 0.0
    refresh_status(session, run.experiment_id)
    return run


def claim_run(session: Session, run_id: int, host: str, pid: int) -> bool:
    """Record the worker process that took a queued run's message; False when the run is not
    queued (finished, cancelled, or already taken) or gone."""
    claimed = session.execute(
        sa.update(ExperimentRun)
        .where(ExperimentRun.id == run_id, ExperimentRun.status == JobStatus.queued)
        .values(owner_host=host, owner_pid=pid))
    return claimed.rowcount == 1


def mark_sent(session: Session, runs: Sequence[ExperimentRun]) -> None:
    """Record that the runs' messages go to the broker now (``unclaimed_runs`` reads it)."""
    now = utcnow()
    for run in runs:
        run.sent_at = now
    session.flush()


def unclaimed_runs(session: Session, quiet_s: float) -> list[ExperimentRun]:
    """Queued runs sent at least ``quiet_s`` seconds ago that no worker has claimed: the ones
    whose message may have died with a worker killed between taking it and claiming the run
    (``workers.unclaimed`` asks the broker which of them still wait on a queue)."""
    sent_before = utcnow() - timedelta(seconds=quiet_s)
    return list(session.scalars(sa.select(ExperimentRun).where(
        ExperimentRun.status == JobStatus.queued, ExperimentRun.owner_pid.is_(None),
        ExperimentRun.sent_at.is_not(None), ExperimentRun.sent_at < sent_before)
        .order_by(ExperimentRun.id)))


def orphaned_runs(session: Session, host: str, alive: Callable[[int], bool]
                  ) -> list[ExperimentRun]:
    """Unfinished runs whose worker process on ``host`` is gone (``alive(pid)`` is False): a
    running one, or a queued one whose message that worker took before it died."""
    rows = session.scalars(sa.select(ExperimentRun).where(
        ExperimentRun.status.in_(UNFINISHED), ExperimentRun.owner_host == host,
        ExperimentRun.owner_pid.is_not(None)).order_by(ExperimentRun.id))
    return [run for run in rows if not alive(int(run.owner_pid))]


def requeue_run(session: Session, run: ExperimentRun) -> None:
    """Put an orphaned run back in the queue, owned by nobody, to be sent again: it begins
    again from the base (a run has no steps to resume from)."""
    run.status, run.owner_host, run.owner_pid, run.started_at = \
        JobStatus.queued, None, None, None
    refresh_status(session, run.experiment_id)


def _finish(session: Session, run_id: int, **values) -> bool:
    """One conditional UPDATE: a run cancelled meanwhile keeps its status."""
    written = session.execute(
        sa.update(ExperimentRun)
        .where(ExperimentRun.id == run_id, ExperimentRun.status.in_(UNFINISHED))
        .values(finished_at=utcnow(), **values))
    run = get_run(session, run_id)
    session.refresh(run)
    refresh_status(session, run.experiment_id)
    return written.rowcount == 1


def finish_run(session: Session, run_id: int, result: dict, blobs=None) -> bool:
    """Record a run's result and mark it succeeded; False when it was stopped meanwhile.

    With ``blobs``, the packs the run made (a graft run's ``result["packs"]``) become catalog
    packs linked to the run, and the state they make behind the run's last router becomes the
    run's state, in the same transaction (`run_packs`).
    """
    run = get_run(session, run_id, lock=True)  # a cancel waits for this transaction
    if JobStatus(run.status).finished:
        return False
    if blobs is not None and result.get("packs"):
        result = {**result, "packs": register_run_packs(session, run, result, blobs)}
        register_run_state(session, run, result, result["packs"], blobs)
    return _finish(session, run_id, status=JobStatus.succeeded, result=result)


def fail_run(session: Session, run_id: int, error: str) -> bool:
    """Mark a run failed with a one-line error; the experiment's other runs go on."""
    line = error.strip().splitlines()[0] if error.strip() else "failed"
    return _finish(session, run_id, status=JobStatus.failed, error=line)


def report_progress(session: Session, run_id: int, stage: str, fraction: float) -> bool:
    """Record a running run's step and fraction done (flushed in the caller's transaction);
    returns True, and writes nothing, when the run is no longer running (cancelled, or
    finished meanwhile): what the running task stops on."""
    done = session.execute(sa.update(ExperimentRun).where(
        ExperimentRun.id == run_id, ExperimentRun.status == JobStatus.running).values(
        stage=stage[:64], progress=min(1.0, max(0.0, float(fraction)))))
    return done.rowcount == 0
