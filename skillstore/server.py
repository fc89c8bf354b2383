"""The app `skillstore serve` runs: the HTTP API with the web console mounted at ``/ui``."""

from __future__ import annotations

from fastapi import FastAPI

from .api import create_api
from .settings import Settings
from .ui.app import UI_PREFIX, create_ui


def create_app(settings: Settings | None = None) -> FastAPI:
    """The API (docs/api.md) and the console (docs/ui.md) over one workspace and one guard."""
    return create_api(settings, mounts={UI_PREFIX: create_ui})
