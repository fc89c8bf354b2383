"""CLI for the job queue: start a worker (learn, wait, cancel, retry and demo join it later)."""

from __future__ import annotations

import os

import typer

from ..jobqueue import QUEUES, parse_queues, settings_env, worker_command
from ..settings import get_settings


def worker(
    queues: str = typer.Option(",".join(QUEUES), "--queues", "-Q",
                               help="Comma-separated queues to serve: gpu, cpu or both."),
    concurrency: int = typer.Option(1, "--concurrency", "-c", min=1,
                                    help="Worker processes; one per GPU is usual."),
    pool: str = typer.Option("prefork", help="Celery pool: prefork, solo or threads."),
    loglevel: str = typer.Option("INFO", "--loglevel", "-l"),
) -> None:
    """Start a real Celery worker on this machine, serving the given queues."""
    settings = get_settings()
    argv = worker_command(parse_queues(queues), concurrency, pool=pool, loglevel=loglevel)
    os.execvpe(argv[0], argv, settings_env(settings))


def register(app: typer.Typer) -> None:
    """Attach the job-queue commands to the root app."""
    app.command("worker")(worker)
