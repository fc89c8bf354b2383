"""The module-level app for the `celery` command and Flower: `celery -A workers.main worker`."""

from .app import create_app

app = create_app()
