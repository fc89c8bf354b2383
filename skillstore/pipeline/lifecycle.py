"""A learning job's life: queue, send, begin a step, record its output, fail, cancel, retry, resume.

Every status change of a learning job goes through this module; `workers.learn` only opens
sessions around these calls, and the CLI and the API call `queue`, `cancel` and `retry`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import sqlalchemy as sa
from celery import chain
from kombu.exceptions import OperationalError
from kombu.utils.url import maybe_sanitize_url
from sqlalchemy.orm import Session

from ..catalog import attach_task, create_job, get_job
from ..catalog.models import Job, JobStep
from ..catalog.schema import JobStatus, utcnow
from ..errors import JobError, unknown_name
from ..jobqueue import LEARN_STAGES, LEARN_TASKS, producer
from ..settings import Settings
from .request import LearnRequest, check_request, resolved

KIND = "learn"
STAGES = LEARN_STAGES

# progress(stage, fraction) -> None; it raises JobCancelled when the job was cancelled meanwhile.
Progress = Callable[[str, float], None]


class JobCancelled(JobError):
    """The job was cancelled while a step ran; the step stops and writes nothing."""


class WaitForEarlier(JobError):
    """An earlier job on the same base has not finished; this job's train step must wait."""


def is_stopped(job: Job) -> bool:
    """A cancelled or failed job runs no more steps; a succeeded one has nothing left to do."""
    return JobStatus(job.status).finished


def output(job: Job, stage: str) -> dict | None:
    """What a finished step recorded, or None when it has not finished."""
    return job.outputs.get(stage)


def record_output(session: Session, job: Job, stage: str, value: dict,
                  seconds: float | None = None) -> dict:
    """Store a step's output in `job_steps`; the first attempt to record a stage wins.

    The job row is locked first (FOR UPDATE on PostgreSQL; SQLite serialises writers), so two
    attempts of one step (a resumed chain beside a redelivered message) cannot both write.
    """
    get_job(session, job.id, lock=True)
    existing = session.scalar(sa.select(JobStep).where(JobStep.job_id == job.id,
                                                       JobStep.stage == stage))
    if existing is not None:
        return existing.output
    session.add(JobStep(job_id=job.id, stage=stage, output=value, seconds=seconds,
                        attempt=job.attempts or 1, finished_at=utcnow()))
    session.flush()
    session.expire(job, ["steps"])
    return value


def record_seconds(session: Session, job: Job, stage: str, seconds: float) -> None:
    """Seconds spent inside a step's library call (the benchmark subtracts them)."""
    session.execute(sa.update(JobStep).where(JobStep.job_id == job.id, JobStep.stage == stage)
                    .values(seconds=round(seconds, 4)))


def forget_output(session: Session, job: Job, stage: str) -> None:
    """Drop a step's output so that the step runs again (a stale evaluation, say)."""
    session.execute(sa.delete(JobStep).where(JobStep.job_id == job.id, JobStep.stage == stage))
    session.expire(job, ["steps"])


def queue(session: Session, settings: Settings, request: LearnRequest, *,
          send: bool = True) -> Job:
    """Store a validated request as a queued job, then send its chain; returns the job.

    The references in the request (skill, base, source, policy) are checked first by
    :func:`skillstore.pipeline.request.check_request`; nothing is written when one fails.
    """
    skill, base = check_request(session, request)
    request = resolved(request)
    job = create_job(session, kind=KIND, request=request.model_dump(mode="json"),
                     base_id=base.id, skill_id=skill.id)
    session.commit()  # the row exists before any worker can look for it
    if send:
        send_chain(session, settings, job, STAGES[0])
    return job


def send_chain(session: Session, settings: Settings, job: Job, from_stage: str) -> str:
    """Send the remaining steps of a job as one Celery chain of immutable signatures."""
    if from_stage not in STAGES:
        raise unknown_name("stage", from_stage, STAGES)
    app = producer(settings)
    steps = STAGES[STAGES.index(from_stage):]
    sigs = [app.signature(LEARN_TASKS[s], args=(job.id,), immutable=True) for s in steps]
    try:
        result = chain(*sigs).apply_async(retry_policy={"max_retries": 2})
    except OperationalError as exc:
        fail(session, job, f"could not reach the broker: {exc}", stage=from_stage)
        session.commit()
        raise JobError(f"Job {job.id} could not be sent to the broker at "
                       f"{maybe_sanitize_url(settings.broker_url)!r} ({exc}); start the broker "
                       f"or fix SKILLSTORE_BROKER_URL, then `skillstore job retry {job.id}`."
                       ) from None
    attach_task(session, job, result.id)
    session.commit()
    return result.id


def earlier_unfinished(session: Session, job: Job) -> Job | None:
    """The oldest unfinished learning job on the same base queued before this one, if any."""
    return session.scalar(
        sa.select(Job).where(Job.kind == KIND, Job.base_id == job.base_id, Job.id < job.id,
                             Job.status.in_([JobStatus.queued, JobStatus.running]))
        .order_by(Job.id).limit(1))


def begin(session: Session, job_id: int, stage: str, host: str, pid: int) -> Job | None:
    """Mark the job running at ``stage`` under this worker process; None when it is stopped.

    Jobs on one base learn in order: the train step raises WaitForEarlier while an earlier
    job on the base is unfinished.
    """
    job = get_job(session, job_id, lock=True)
    if is_stopped(job):
        return None
    if stage == "train" and earlier_unfinished(session, job) is not None:
        raise WaitForEarlier(f"Job {job.id} waits for an earlier job on its base.")
    if job.status in (JobStatus.cancelled, JobStatus.succeeded):
        raise JobError(f"Job {job.id} is {job.status.value}; it cannot start again.")
    job.status = JobStatus.running
    job.attempts += 1
    job.stage = stage
    job.error = None
    job.started_at = job.started_at or utcnow()
    set_owner(job, host, pid)
    session.flush()
    return job


def set_owner(job: Job, host: str | None, pid: int | None) -> None:
    job.owner_host, job.owner_pid = host, pid


def set_progress(session: Session, job_id: int, stage: str, fraction: float) -> None:
    """Record how far a running job is (fraction of the whole job); raises JobCancelled when
    the job was stopped meanwhile, which is how a running step learns of a cancel.

    One conditional UPDATE, as in ``step_done``: a read then a write let a twin attempt finish
    the job in between, and the write put a finished job's progress back to this step's
    fraction (a SIGKILL run on PostgreSQL ended with a succeeded job at 0.6)."""
    unfinished = [s for s in JobStatus if not s.finished]
    written = session.execute(
        sa.update(Job).where(Job.id == job_id, Job.status.in_(unfinished))
        .values(stage=stage, progress=min(1.0, max(0.0, float(fraction)))))
    if written.rowcount == 0:
        job = get_job(session, job_id)  # NotFoundError for a job that is not there
        raise JobCancelled(f"Job {job_id} was {job.status.value} during {stage}.")


def step_done(session: Session, job_id: int, stage: str) -> None:
    """Move a running job to the end of ``stage`` once that step's output is recorded.

    One conditional UPDATE, not a read then a write: a twin attempt of the job (a resumed
    chain beside a redelivered message) may have finished it meanwhile, and a row read
    earlier in the step would write its stale progress over the finished job's.
    """
    recorded = sa.exists().where(JobStep.job_id == Job.id, JobStep.stage == stage)
    session.execute(sa.update(Job).where(Job.id == job_id, Job.status == JobStatus.running,
                                         recorded)
                    .values(stage=stage, progress=(STAGES.index(stage) + 1) / len(STAGES)))


def finish(session: Session, job: Job, *, pack_id: int | None = None) -> None:
    job.status = JobStatus.succeeded
    job.progress = 1.0
    if pack_id is not None:
        job.pack_id = pack_id
    job.finished_at = utcnow()
    session.flush()


def fail(session: Session, job: Job, error: str, *, stage: str | None = None) -> None:
    """Mark a job failed with a one-line error and the stage it failed in (a stopped job keeps
    the status it has)."""
    if is_stopped(job):
        return
    job.status = JobStatus.failed
    job.error = error.strip().splitlines()[0] if error.strip() else "failed"
    if stage:
        job.stage = stage
    job.finished_at = utcnow()
    session.flush()


def cancel(session: Session, job_id: int | str) -> Job:
    """Mark a job cancelled; running steps notice at their next progress report and stop."""
    job = get_job(session, job_id, lock=True)
    if is_stopped(job):
        raise JobError(f"Job {job.id} already {job.status.value}; nothing to cancel.")
    job.status = JobStatus.cancelled
    job.finished_at = utcnow()
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
    set_owner(job, None, None)  # queued afresh: the worker that takes it claims it
    session.flush()
    send_chain(session, settings, job, stage)
    return job


def next_stage(job: Job) -> str:
    """The first step whose output the job has not recorded: where to send it again from."""
    done = job.outputs
    return next((stage for stage in STAGES if stage not in done), STAGES[-1])


def unreferenced_jobs(session: Session, referenced: set[int],
                      held: dict[int, set[str]] | None = None) -> tuple[list[Job], list[Job]]:
    """The unfinished jobs that no message in the broker keeps going, in two kinds:
    ``referenced`` holds the job ids that some queued message names, ``held`` the steps of each
    job that a worker took and has not acknowledged.

    - lost: no message names the job. A broker that loses a message it was handing over (Redis
      popped it, then went away before the consumer could record it as unacknowledged) leaves
      its job queued for ever; nothing else would send it again.
    - unsure: only held messages name the job, and none is for the step it is running: each
      is for a step it recorded, or for one it never began. A recorded step's worker
      acknowledges only once the next step's message is sent, so that message may still be on
      its way: a publish during a broker outage is retried for ``jobqueue.publish_window_s()``.
      A step never begun may wait in a live worker for a free process, or be gone with it: a
      task whose result backend was down as it started failed before its body and took its
      message with it (docs/reliability.md, bug 16). Past the publish window, a job still named
      only so is lost too: Redis hands a held message back only after its visibility timeout
      (hours), and the idempotent steps make a second send harmless.
    A held message for the step the job is running (``job.stage``, not recorded) keeps it going.
    """
    held = held or {}
    rows = session.scalars(sa.select(Job).where(
        Job.kind == KIND, Job.status.in_([JobStatus.queued, JobStatus.running]),
        Job.id.not_in(referenced)).order_by(Job.id))
    lost, unsure = [], []
    for job in rows:
        steps = held.get(job.id, set())
        if not steps:
            lost.append(job)
        elif job.stage not in steps - set(job.outputs):
            unsure.append(job)
    return lost, unsure


def resend_unreferenced(session: Session, settings: Settings, referenced: set[int],
                        held: dict[int, set[str]] | None = None, *, unsure_too: bool = True
                        ) -> tuple[list[Job], list[Job]]:
    """Send again, from their next step, the unfinished jobs that no message in the broker
    keeps going (``unreferenced_jobs``); returns (sent, left). The lost ones are always sent;
    the unsure ones too with ``unsure_too`` (a look after their workers' publish window),
    else they are left for that later look. The steps are idempotent, so a job sent twice
    finishes once."""
    lost, unsure = unreferenced_jobs(session, referenced, held)
    sent, left = (sorted(lost + unsure, key=lambda job: job.id), []) if unsure_too \
        else (lost, unsure)
    for job in sent:
        send_chain(session, settings, job, next_stage(job))
    return sent, left


def unclaimed_jobs(session: Session, quiet_s: float) -> list[Job]:
    """Queued jobs that were sent, that no worker has claimed, and whose row has not changed
    for ``quiet_s`` seconds: the ones whose message may have died with the worker that took it
    (``workers.unclaimed`` asks the broker which of them still wait on a queue)."""
    quiet_since = utcnow() - timedelta(seconds=quiet_s)
    return list(session.scalars(sa.select(Job).where(
        Job.kind == KIND, Job.status == JobStatus.queued, Job.owner_pid.is_(None),
        Job.celery_task_id.is_not(None), Job.updated_at < quiet_since).order_by(Job.id)))


def orphaned_jobs(session: Session, host: str, alive: Callable[[int], bool]) -> list[Job]:
    """Unfinished jobs whose recorded worker process on ``host`` is gone (``alive(pid)`` is
    False): running ones, and queued ones whose message a worker took before it died."""
    rows = session.scalars(sa.select(Job).where(
        Job.kind == KIND, Job.status.in_([JobStatus.queued, JobStatus.running]),
        Job.owner_host == host, Job.owner_pid.is_not(None)))
    return [job for job in rows if not alive(int(job.owner_pid))]


def resume_orphans(session: Session, settings: Settings, host: str,
                   alive: Callable[[int], bool]) -> list[Job]:
    """Send again, from their stage, the jobs whose worker on this host died; the steps are
    idempotent, so a job sent twice still finishes once."""
    orphans = orphaned_jobs(session, host, alive)
    for job in orphans:
        send_chain(session, settings, job, job.stage if job.stage in STAGES else STAGES[0])
    return orphans
