"""The HTTP API: a FastAPI app over the same service functions as the CLI (docs/api.md)."""

from .app import create_api

__all__ = ["create_api"]
