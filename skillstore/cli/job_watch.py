"""Follow learning jobs from the catalog with a live rich progress bar per job."""

from __future__ import annotations

import time
from collections.abc import Sequence

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from ..catalog import JobStatus, get_job
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
