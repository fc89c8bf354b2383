"""Operational tasks: liveness checks that prove a worker serves a queue end to end."""

from __future__ import annotations

import os
import socket

from celery import shared_task

from skillstore.jobqueue import NOOP_TASK, PING_TASK


@shared_task(name=PING_TASK)
def ping() -> dict:
    """Answer with who ran the task, so a caller can tell which worker and queue served it."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


@shared_task(name=NOOP_TASK, acks_late=True, reject_on_worker_lost=True)
def noop(job_id: int) -> int:
    """A step that does nothing: the benchmark's pipelines measure pure orchestration with it."""
    return job_id
