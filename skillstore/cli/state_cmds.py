"""CLI commands (filled in by the issue that owns this group)."""

import typer


def register(app: typer.Typer) -> None:
    """Attach this module's commands to the root app and the shared groups."""
