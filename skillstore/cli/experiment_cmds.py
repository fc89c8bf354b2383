"""`skillstore experiment validate`: check an experiment spec and print the runs it asks for."""

from __future__ import annotations

from pathlib import Path

import typer

from ._common import print_json, workspace_session
from ._groups import EXPERIMENT


def validate(
    spec_path: Path = typer.Argument(..., metavar="SPEC", help="Experiment spec (YAML)."),
    as_json: bool = typer.Option(False, "--json", help="Print the spec and its runs as JSON."),
) -> None:
    """Validate a spec against its schema and the catalog (base, sources, skills); print the
    (method, seed) runs it asks for. Nothing is queued."""
    from ..experiments import check_spec, load_spec

    spec = load_spec(spec_path)
    with workspace_session() as (_, session):
        check_spec(session, spec)
    runs = spec.runs()
    if as_json:
        print_json({"spec": spec.model_dump(mode="json"),
                    "runs": [{"method": m, "seed": s} for m, s in runs]})
        return
    typer.echo(f"experiment {spec.name}: base {spec.base}, {len(spec.skills)} skill(s) "
               f"({', '.join(s.name for s in spec.skills)}), {len(runs)} run(s)")
    for method, seed in runs:
        settings = ", ".join(f"{k}={v}" for k, v in spec.settings(method).model_dump().items())
        typer.echo(f"  {method:<16} seed {seed:<4} {settings}")


def register(app: typer.Typer) -> None:
    """Attach `experiment validate` to the EXPERIMENT group."""
    EXPERIMENT.app.command("validate")(validate)
