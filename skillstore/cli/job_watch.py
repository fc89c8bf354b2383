"""Follow learning jobs, or an experiment's runs, from the catalog with a live rich progress
bar per job or run."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from ..catalog import JobStatus, get_job
from ..catalog.models import ExperimentRun
from ..errors import JobError

POLL_S = 0.5


def _describe(job) -> str:
    request = job.request or {}
    return f"job {job.id} {request.get('skill', '?')} ({request.get('method', '?')})"


def _state(job) -> str:
    status = JobStatus(job.status)
    if status == JobStatus.running:
        return f"{job.stage or 'starting'}"
    if status == JobStatus.failed:
        return f"failed in {job.stage}: {job.error}"
    if status == JobStatus.succeeded:
        verdict = (job.outputs.get("gate") or {}).get("verdict", "done")
        return f"done, pack {job.pack_id} {verdict}"
    return status.value


def follow_jobs(catalog, job_ids: Sequence[int], *, timeout: float | None = None,
                console: Console | None = None, quiet: bool = False) -> dict[int, JobStatus]:
    """Poll the job rows until every job has finished; returns the final status of each.

    The bar is fed by the progress the workers write into the job rows, so it works from any
    machine that can read the catalog.
    """
    console = console or Console()
    deadline = None if timeout is None else time.monotonic() + timeout
    final: dict[int, JobStatus] = {}
    columns = (TextColumn("{task.description}"), BarColumn(),
               TextColumn("{task.percentage:>3.0f}%"), TextColumn("{task.fields[state]}"),
               TimeElapsedColumn())
    with Progress(*columns, console=console, disable=quiet, transient=False) as bar:
        tasks = {}
        while True:
            with catalog.session() as session:
                for jid in job_ids:
                    job = get_job(session, jid)
                    if jid not in tasks:
                        tasks[jid] = bar.add_task(_describe(job), total=1.0, state="")
                    bar.update(tasks[jid], completed=job.progress, state=_state(job))
                    if JobStatus(job.status).finished:
                        final[jid] = JobStatus(job.status)
            if len(final) == len(job_ids):
                return final
            if deadline is not None and time.monotonic() > deadline:
                waiting = sorted(set(job_ids) - set(final))
                raise JobError(f"Timed out waiting for job(s) {', '.join(map(str, waiting))}; "
                               "is a worker running? Start one with `skillstore worker`.")
            time.sleep(POLL_S)


def follow_runs(catalog, experiment_id: int, *, timeout: float | None = None,
                console: Console | None = None,
                on_finished: Callable[[ExperimentRun, Progress], None] | None = None
                ) -> dict[int, JobStatus]:
    """Poll an experiment's runs until every one has finished, a bar per run with the step
    and fraction its worker last reported; returns each run's final status.
    ``on_finished(run, bar)`` is called once for each run as it finishes (the demo adopts the
    graft run's packs there, while the others still train), with the bar to add a line to."""
    from ..experiments.catalog import get_experiment

    console = console or Console()
    deadline = None if timeout is None else time.monotonic() + timeout
    final: dict[int, JobStatus] = {}
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[state]}"),
               TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        tasks = {}
        while True:
            finished = []
            with catalog.session() as session:
                for run in get_experiment(session, experiment_id).runs:
                    if run.id not in tasks:
                        tasks[run.id] = bar.add_task(f"run {run.id} {run.method} (seed "
                                                     f"{run.seed})", total=None, state="")
                    status = JobStatus(run.status)
                    if status.finished and run.id not in final:
                        final[run.id] = status
                        bar.update(tasks[run.id], total=1.0, completed=1.0,
                                   state=status.value + (f": {run.error}" if run.error else ""))
                        bar.stop_task(tasks[run.id])
                        finished.append(run)
                    elif status == JobStatus.running and run.progress is not None:
                        bar.update(tasks[run.id], total=1.0, completed=run.progress,
                                   state=run.stage or "starting")
                    elif not status.finished:
                        bar.update(tasks[run.id], state=status.value)
                session.expunge_all()
            for run in finished:
                if on_finished is not None:
                    on_finished(run, bar)
            if tasks and len(final) == len(tasks):
                return final
            if deadline is not None and time.monotonic() > deadline:
                raise JobError(f"Timed out waiting for experiment {experiment_id}'s runs; is a "
                               "worker running? Start one with `skillstore worker`.")
            time.sleep(POLL_S)
