"""Queue an experiment: check the spec whole, store it with its runs, send one task per run."""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa
from kombu.exceptions import OperationalError
from kombu.utils.url import maybe_sanitize_url
from sqlalchemy.orm import Session

from ..blobstore import BlobStore
from ..catalog.models import Experiment, ExperimentRun, Skill
from ..catalog.schema import JobStatus
from ..errors import JobError
from ..heldout import SUITES_DIR
from ..intake import register_skill_dataset
from ..jobqueue import EXPERIMENT_RUN_TASK, producer
from ..settings import Settings
from .catalog import create_experiment, fail_run, mark_sent, orphaned_runs, requeue_run
from .methods import check_runnable
from .spec import ExperimentSpec, check_spec


def queue_experiment(session: Session, settings: Settings, spec: ExperimentSpec, *,
                     blobs: BlobStore, send: bool = True) -> Experiment:
    """Check ``spec`` against the catalog and the runnable methods (nothing is written when a
    check fails), register the skills it gives as data, store the experiment and its runs,
    then send one task per run; runs of different methods may go to different workers."""
    check_spec(session, spec)
    check_runnable(spec)
    register_data_skills(session, settings, blobs, spec)
    experiment = create_experiment(session, spec)
    session.commit()  # the rows exist before any worker can look for them
    if send:
        send_runs(session, settings, experiment)
    return experiment


def register_data_skills(session: Session, settings: Settings, blobs: BlobStore,
                         spec: ExperimentSpec) -> list[str]:
    """Register each skill the spec gives as ``data`` and the catalog lacks, as `skillstore
    skill add` does without a suite: the rows stored, a held-out test half (``test_size``
    rows, scored by the stage's ``metric``) written as the skill's lm-eval task, training on
    the rest. A skill registered already from the same file is reused (`check_spec` refused
    any other).
    Returns the names registered."""
    added = []
    for stage in spec.skills:
        if stage.data is None or session.scalar(
                sa.select(Skill.id).where(Skill.name == stage.name)) is not None:
            continue
        register_skill_dataset(session, blobs, name=stage.name, data=stage.data,
                               description=f"registered by experiment {spec.name}",
                               suites_dir=settings.home / SUITES_DIR, metric=stage.metric,
                               test_size=stage.test_size)
        added.append(stage.name)
    return added


def _send(app, run_id: int) -> None:
    app.send_task(EXPERIMENT_RUN_TASK, args=(run_id,), retry_policy={"max_retries": 2})


def send_runs(session: Session, settings: Settings, experiment: Experiment) -> None:
    """One Celery task per queued run; a broker that cannot be reached fails the unsent runs.

    Sent seed by seed (every method's first seed, then the next), so that with several
    workers a LoRA method's first seed usually finishes its sweep before its later seeds
    start, and they reuse its choice instead of sweeping again."""
    app = producer(settings)
    seeds = list(experiment.spec.get("seeds") or [])
    runs = sorted((r for r in experiment.runs if r.status == JobStatus.queued),
                  key=lambda r: (seeds.index(r.seed) if r.seed in seeds else len(seeds), r.id))
    mark_sent(session, runs)
    session.commit()  # before any worker can claim one
    for i, run in enumerate(runs):
        try:
            _send(app, run.id)
        except OperationalError as exc:
            for unsent in runs[i:]:
                fail_run(session, unsent.id, f"could not reach the broker: {exc}")
            session.commit()
            raise JobError(f"Experiment {experiment.id} could not be sent to the broker at "
                           f"{maybe_sanitize_url(settings.broker_url)!r} ({exc}); start the "
                           "broker or fix SKILLSTORE_BROKER_URL, then run the spec again."
                           ) from None


def resend_unreferenced_runs(session: Session, settings: Settings,
                             referenced: set[int]) -> list[ExperimentRun]:
    """Send again the unfinished runs that no message in the broker names (``referenced``
    holds the run ids that some queued or unacknowledged message does); see
    ``pipeline.lifecycle.resend_unreferenced``. A run sent twice begins once more from the
    base and records one result."""
    lost = list(session.scalars(sa.select(ExperimentRun).where(
        ExperimentRun.status.in_([JobStatus.queued, JobStatus.running]),
        ExperimentRun.id.not_in(referenced)).order_by(ExperimentRun.id)))
    return send_again(session, settings, lost)


def send_again(session: Session, settings: Settings,
               runs: list[ExperimentRun]) -> list[ExperimentRun]:
    """Send the runs' messages once more, their new send time committed first."""
    if not runs:
        return runs
    mark_sent(session, runs)
    session.commit()
    app = producer(settings)
    for run in runs:
        _send(app, run.id)
    return runs


def resume_orphan_runs(session: Session, settings: Settings, host: str,
                       alive: Callable[[int], bool]) -> list[ExperimentRun]:
    """Send again the runs whose worker on this host died (SIGKILL, power cut), from the
    base. Redis and RabbitMQ would redeliver such a message after their visibility timeout
    (12 h for Redis); the embedded SQL broker never does, so this is what finishes the run
    there. The requeue is committed before the send, so the worker that takes the message
    finds the run queued and claims it."""
    orphans = orphaned_runs(session, host, alive)
    if not orphans:
        return []
    for run in orphans:
        requeue_run(session, run)
    return send_again(session, settings, orphans)
