"""The `skillstore` command line: one typer app assembled from one module per command group."""

from __future__ import annotations

import importlib
import sys

import typer

from ..errors import SkillstoreError
from ._groups import GROUPS

app = typer.Typer(
    name="skillstore",
    help="Teach one model new skills as compressed, versioned SkillPacks, without forgetting.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Each module exposes register(app); heavy imports (torch, transformers) stay inside commands
# so that `skillstore --help` answers at once.
COMMAND_MODULES = (
    "catalog_cmds",   # init, base, skill, pack list/show/lineage, job list/show, gc
    "zoo_cmds",       # zoo build
    "pack_cmds",      # pack compress/inspect/apply/export
    "state_cmds",     # state ..., report, pack promote/reject/retire
    "job_cmds",       # learn, worker, job wait/cancel/retry, demo
    "serve_cmds",     # serve (the HTTP API), api-token new/hash
    "experiment_cmds",  # experiment validate
)

for _group in GROUPS:
    app.add_typer(_group.app, name=_group.name, help=_group.help)

for _name in COMMAND_MODULES:
    importlib.import_module(f"{__name__}.{_name}").register(app)


def main() -> None:
    """Console entry point: a SkillstoreError becomes one line on stderr and exit status 1."""
    try:
        app()
    except SkillstoreError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
