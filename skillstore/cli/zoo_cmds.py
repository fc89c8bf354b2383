"""`skillstore zoo build`: build (or reuse) the tiny model zoo and the skill curriculum."""

from __future__ import annotations

import json

import typer

from ._groups import ZOO


def build(
    as_json: bool = typer.Option(False, "--json", help="Print the paths as one JSON object."),
    seed: int = typer.Option(0, help="Seed of the weights and the curriculum."),
    force: bool = typer.Option(False, help="Rebuild even when the cache has this recipe."),
) -> None:
    """Build the Llama target, the GPT-2 source and the curriculum, cached by recipe."""
    from rich.progress import Progress

    from ..zoo import build_zoo, zoo_manifest

    if as_json:
        paths = build_zoo(seed=seed, force=force)
        typer.echo(json.dumps(paths.to_json()))
        return
    with Progress(transient=True) as bar:
        tasks: dict[str, int] = {}

        def report(stage: str, fraction: float) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=1.0)
            bar.update(tasks[stage], completed=fraction)

        paths = build_zoo(seed=seed, force=force, progress=report)
    manifest = zoo_manifest(paths)
    typer.echo(f"zoo {manifest['digest']} ({manifest['seconds']:.0f} s to build)")
    typer.echo(f"  target      {paths.target}")
    for name, path in paths.sources.items():
        typer.echo(f"  source      {path}  ({name})")
    typer.echo(f"  curriculum  {paths.curriculum}")
    typer.echo(f"  lm-eval     {paths.curriculum / 'tasks'}")


def register(app: typer.Typer) -> None:
    """Attach `zoo build` to the shared ZOO group."""
    ZOO.app.command("build")(build)
