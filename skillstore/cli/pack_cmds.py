"""`skillstore pack compress|tune|inspect|apply|export`: SkillPacks from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from ..errors import ConfigError
from ._groups import PACK

FORMATS = ("merged", "peft")


def _parse_pack_arg(arg: str) -> tuple[Path, float]:
    """``pack.safetensors`` or ``pack.safetensors@0.5`` -> (path, scale)."""
    path, _, scale = arg.rpartition("@") if "@" in arg else (arg, "", "1.0")
    try:
        return Path(path), float(scale)
    except ValueError:
        raise ConfigError(f"Scale {scale!r} in {arg!r} is not a number; write PACK@0.5.") from None


def _base_of(pf, base: Path | None) -> Path:
    """``--base``, or the base folder the pack records; a clear error when neither exists."""
    base = base or Path(pf.manifest.get("created_from", {}).get("base", ""))
    if not str(base) or not base.is_dir():
        raise ConfigError(f"The base folder of {str(pf.path)!r} is unknown or gone "
                          f"({str(base)!r}); pass --base.")
    return base


def compress(
    base: Path = typer.Option(..., "--base", help="Base model folder (safetensors)."),
    tuned: Path = typer.Option(..., "--tuned", help="Fine-tuned model folder."),
    policy: str = typer.Option("balanced", "--policy",
                               help="Preset (lossless, balanced, compact) or a JSON policy file."),
    budget: float | None = typer.Option(None, "--budget", min=0.01, max=100,
                                         help="Fit in this percent of the dense fp16 delta "
                                              "(e.g. 5)."),
    out: Path = typer.Option(..., "-o", "--out", help="Pack file to write (.safetensors)."),
) -> None:
    """Compress the delta of a fine-tuned checkpoint against its base into one pack file."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from ..packs import compress_checkpoint, load_policy

    chosen = load_policy(policy, budget=None if budget is None else budget / 100)
    with Progress(TextColumn("{task.description}"), BarColumn(),
                  TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                  transient=True) as bar:
        task = bar.add_task("compressing", total=None)

        def report(done: int, total: int, name: str) -> None:
            bar.update(task, completed=done, total=total, description=f"compressing {name}"[:60])

        summary = compress_checkpoint(base, tuned, chosen, out, progress=report)
    typer.echo(f"wrote {summary.path} ({summary.bytes:,} bytes, {100 * summary.ratio:.2f}% of the "
               f"dense fp16 delta, relative error {summary.rel_error:.4f}, {summary.seconds:.1f}s)")
    for role, codecs in sorted(summary.codecs_by_role.items()):
        typer.echo(f"  {role}: {', '.join(codecs)}")


def tune(
    pack: Path = typer.Argument(..., help="Pack file to tune (it is not changed)."),
    train: Path = typer.Option(..., "--train",
                               help="The skill's training rows (JSONL with prompt and answer)."),
    out: Path = typer.Option(..., "-o", "--out", help="Tuned pack file to write (.safetensors)."),
    base: Path | None = typer.Option(None, "--base",
                                     help="Base folder; default: the one recorded in the pack."),
    steps: int = typer.Option(200, "--steps", min=1, help="Optimiser steps."),
    lr: float = typer.Option(1e-2, "--lr", min=0.0,
                             help="Adam step on each value's relative change."),
) -> None:
    """Tune a pack's float payload (group scales, gains, norms) on the skill's training loss;
    the codes stay fixed, so the tuned pack has the same size."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from ..curriculum.validate import load_rows
    from ..models import load_causal_lm
    from ..packs import read_pack
    from ..packs.tune import TuneConfig, tune_pack

    rows = load_rows(train)
    pf = read_pack(pack)
    model, tok = load_causal_lm(_base_of(pf, base))
    with Progress(TextColumn("{task.description}"), BarColumn(),
                  TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                  transient=True) as bar:
        task = bar.add_task("tuning", total=steps)

        def report(step: int, total: int, loss: float) -> None:
            bar.update(task, completed=step, description=f"tuning, loss {loss:.4f}")

        result = tune_pack(pf, model, tok, rows, out, TuneConfig(steps=steps, lr=lr), report)
    typer.echo(f"wrote {result.path} ({result.bytes:,} bytes; training loss "
               f"{result.loss_before:.4f} -> {result.loss_after:.4f} in {result.steps} steps, "
               f"{result.seconds:.1f}s)")


def inspect(
    pack: Path = typer.Argument(..., help="Pack file."),
    as_json: bool = typer.Option(False, "--json", help="Print the whole manifest as JSON."),
) -> None:
    """Show a pack's manifest, and size and reconstruction error per module."""
    from rich.console import Console
    from rich.table import Table

    from ..packs import read_pack

    pf = read_pack(pack)
    if as_json:
        typer.echo(json.dumps(pf.manifest, indent=2, sort_keys=True))
        return
    m = pf.manifest
    console = Console()
    if not console.is_terminal:  # piped: do not cut tensor names to 80 columns
        console = Console(width=200)
    console.print(f"[bold]{pack}[/bold]  format {m['format_version']}, made by skillstore "
                  f"{m['producer_version']}\nbase {m['base_fingerprint']}\n"
                  f"digest {m['payload_digest']}")
    table = Table("tensor", "role", "codec", "params", "bytes", "rel. error")
    total = dense = 0
    for name in pf.names:
        e = m["tensors"][name]
        n = pf.nbytes_of(name)
        numel = 1
        for d in e["shape"]:
            numel *= d
        total, dense = total + n, dense + 2 * numel
        detail = {**{k: v for k, v in e["params"].items() if k != "schedule"}, **{
            k: v for k, v in e["info"].items() if k in ("blocks", "layout", "count")}}
        table.add_row(name, e["role"], e["codec"], json.dumps(detail, separators=(",", ":")),
                      f"{n:,}", f"{e.get('rel_error', float('nan')):.4f}")
    console.print(table)
    console.print(f"payload {total:,} bytes = {100 * total / max(dense, 1):.2f}% of the dense fp16 "
                  f"delta of the changed tensors; file {pack.stat().st_size:,} bytes")


def apply(
    packs: list[str] = typer.Argument(..., help="Pack files, each optionally PACK@SCALE."),
    base: Path = typer.Option(..., "--base", help="Base model folder the packs were made for."),
    out: Path = typer.Option(..., "-o", "--out", help="Folder for the merged model."),
) -> None:
    """Apply packs to a base and write the merged model folder."""
    from ..packs import export_merged

    pairs = [_parse_pack_arg(p) for p in packs]
    export_merged(base, pairs, out)
    typer.echo(f"wrote merged model to {out} ({len(pairs)} pack(s))")


def export(
    pack: Path = typer.Argument(..., help="Pack file."),
    fmt: str = typer.Option(..., "--format", help="merged or peft."),
    out: Path = typer.Option(..., "-o", "--out", help="Output folder."),
    base: Path | None = typer.Option(None, "--base",
                                     help="Base folder; default: the one recorded in the pack."),
    scale: float = typer.Option(1.0, "--scale", help="Scale of the delta (merged only)."),
) -> None:
    """Export a pack as a merged model folder or a PEFT LoRA adapter."""
    from ..errors import unknown_name
    from ..packs import export_merged, export_peft, read_pack

    if fmt not in FORMATS:
        raise unknown_name("export format", fmt, list(FORMATS))
    pf = read_pack(pack)
    base = _base_of(pf, base)
    if fmt == "merged":
        export_merged(base, [(pf, scale)], out)
    else:
        export_peft(pf, base, out)
    typer.echo(f"wrote {fmt} export to {out}")


def register(app: typer.Typer) -> None:
    """Attach this module's commands to the shared `pack` group."""
    for fn in (compress, tune, inspect, apply, export):
        PACK.app.command(fn.__name__)(fn)
