"""The Celery app factory: the queue layout comes from skillstore.jobqueue, the tasks from here."""

from __future__ import annotations

from celery import Celery

from skillstore.jobqueue import celery_config
from skillstore.settings import Settings, get_settings

from . import unclaimed  # noqa: F401 - puts back messages a killed worker took unclaimed
from .reconnect import Consumer, PutBackStranded

TASK_MODULES = ("workers.ops", "workers.learn", "workers.experiments")


def create_app(settings: Settings | None = None) -> Celery:
    """Build the worker-side Celery app for these settings (broker and backend by URL)."""
    settings = settings or get_settings()
    app = Celery("skillstore", include=list(TASK_MODULES))
    app.conf.update(celery_config(settings))
    # After a broker restart, put back the messages this worker held unstarted (reconnect.py).
    app.conf.worker_consumer = Consumer
    app.steps["consumer"].add(PutBackStranded)
    return app
