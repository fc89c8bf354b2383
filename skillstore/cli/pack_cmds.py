"""`skillstore pack compress|tune|inspect|apply|export|download`: SkillPacks from the command line.

`apply`, `export` and `download` take a pack file or a catalog pack (`12`, `sort@v1`); an
existing file of that name wins.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from ..errors import (
    BlobError,
    ConfigError,
    CorruptPackError,
    DatabaseUnavailableError,
    NotFoundError,
    WorkspaceError,
)
from ._groups import PACK

if TYPE_CHECKING:
    from ..packs import PackFile

FORMATS = ("merged", "peft")
PACK_HELP = ("Pack file (.safetensors), or a catalog pack: an id (12) or SKILL@vN (sort@v1). "
             "An existing file of that name wins.")
BASE_HELP = ("Base model folder; default: the base the catalog records for a catalog pack, "
             "else the folder recorded in the pack file.")


@dataclass(frozen=True)
class Located:
    """A pack named on the command line, as a local file: the file itself, or the verified blob
    of a catalog pack with its name and the base folder the catalog records for it."""

    path: Path
    name: str | None = None  # `sort@v1` for a catalog pack
    file_name: str = ""
    base_name: str | None = None
    base_uri: str | None = None


def _lower_first(message: str) -> str:
    return message[:1].lower() + message[1:]


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _parse_pack_arg(arg: str) -> tuple[str, float]:
    """``PACK`` or ``PACK@0.5`` -> (PACK, scale); PACK is a file or a catalog pack.

    An existing path wins, whole or before the scale (``a.safetensors@0.5``); otherwise a
    reference before the scale (``sort@v1@0.5``, ``12@0.5``), else the argument is taken whole
    (``sort@v1``; ``sort@2`` is version 2) for `_locate` to look up or refuse.
    """
    from ..catalog.packs import is_pack_ref

    if Path(arg).exists():
        return arg, 1.0
    head, sep, tail = arg.rpartition("@")
    if not sep or not (Path(head).exists() or is_pack_ref(head)):
        return arg, 1.0  # a whole reference (`sort@v1`; `sort@2` is version 2), or unknown
    scale = _number(tail)
    if scale is None:
        if is_pack_ref(arg):  # `sort@v1` beside a folder named `sort`
            return arg, 1.0
        raise ConfigError(f"Scale {tail!r} in {arg!r} is not a number; write PACK@0.5.")
    return head, scale


def _neither(arg: str) -> NotFoundError:
    return NotFoundError(f"{arg!r} is neither an existing pack file nor a catalog pack "
                         "reference; pass a .safetensors file, a pack id (12) or SKILL@vN "
                         "(sort@v1), as `skillstore pack list` shows them.")


def _locate(args: list[str]) -> list[Located]:
    """Each argument as a local file: an existing path as it is; a reference looked up in the
    workspace's catalog (as `GET /packs/{ref}/file` does) and its blob verified against its
    digest. The catalog is opened once, and only when a reference is given."""
    from ..catalog.packs import get_pack, is_pack_ref, pack_file_name, pack_name
    from ._common import workspace_session

    refs = [a for a in args if not Path(a).exists()]
    if bad := next((a for a in refs if not is_pack_ref(a)), None):
        raise _neither(bad)
    rows: dict[str, tuple[str, Located]] = {}
    blobs = cache = None
    if refs:
        try:
            with workspace_session() as (catalog, session):
                blobs, cache = catalog.blobs, catalog.settings.home / "cache"
                for ref in refs:
                    try:
                        row = get_pack(session, ref)
                    except NotFoundError as exc:
                        raise NotFoundError(f"No file {ref!r} and no such pack in the catalog: "
                                            f"{_lower_first(str(exc))}") from None
                    rows[ref] = (row.blob_digest, Located(  # its path: the blob, read below
                        Path(), pack_name(row), pack_file_name(row), row.base.name, row.base.uri))
        except (WorkspaceError, DatabaseUnavailableError) as exc:
            raise type(exc)(f"{refs[0]!r} is not a file, and the catalog to look it up in "
                            f"cannot be opened: {_lower_first(str(exc))}") from None
    found = []
    for arg in args:
        if arg not in rows:
            found.append(Located(Path(arg), file_name=Path(arg).name))
            continue
        digest, row = rows[arg]
        try:
            path = blobs.local_path(digest, cache)
        except BlobError as exc:
            raise type(exc)(f"Pack {row.name}: {_lower_first(str(exc))}") from None
        found.append(replace(row, path=path))
    return found


def _read(found: Located) -> PackFile:
    """The verified pack; a damaged catalog blob is named by its pack."""
    from ..packs import read_pack

    try:
        return read_pack(found.path)
    except CorruptPackError as exc:
        if found.name is None:
            raise
        raise CorruptPackError(f"Pack {found.name}: {exc}") from None


def _base_of(pf: PackFile, base: Path | None, found: Located | None = None) -> Path:
    """``--base``; else the catalog's base of a catalog pack, or the base folder a pack file
    records; a clear error when that folder is not on this machine."""
    if base is not None:
        if not base.is_dir():
            raise NotFoundError(f"Base folder {str(base)!r} does not exist; pass the base "
                                "model's checkpoint folder to --base.")
        return base
    if found is not None and found.base_uri is not None:
        base = Path(found.base_uri)
        if not base.is_dir():
            raise NotFoundError(f"The base of pack {found.name}, {found.base_name!r}, is recorded "
                                f"at {found.base_uri!r}, which is not a folder on this machine; "
                                "pass --base.")
        return base
    recorded = pf.manifest.get("created_from", {}).get("base") or ""  # packs before v0.x
    if recorded and Path(recorded).is_dir():  # Path("") would be the working folder
        return Path(recorded)
    registered = _registered_base(pf.base_fingerprint)
    if registered is not None:
        return registered
    raise ConfigError(f"The base of {str(pf.path)!r} is named by fingerprint only "
                      f"({pf.base_fingerprint}), and no base folder on this machine is "
                      "registered with it; pass --base.")


def _registered_base(fingerprint: str) -> Path | None:
    """The folder of the catalog's base with ``fingerprint``, when the workspace has a catalog,
    holds such a base, and its folder is on this machine; else None."""
    import sqlalchemy as sa

    from ..catalog.models import BaseCheckpoint
    from ._common import workspace_session

    try:
        with workspace_session() as (_, session):
            uri = session.scalar(sa.select(BaseCheckpoint.uri).where(
                BaseCheckpoint.fingerprint == fingerprint))
    except (WorkspaceError, DatabaseUnavailableError):
        return None  # no catalog to ask: the caller's error asks for --base
    return Path(uri) if uri and Path(uri).is_dir() else None


def compress(
    base: Path = typer.Option(..., "--base", help="Base model folder (safetensors)."),
    tuned: Path = typer.Option(..., "--tuned", help="Fine-tuned model folder."),
    policy: str = typer.Option("balanced", "--policy",
                               help="Preset or a JSON policy file: lossless; balanced (a file "
                                    "of at most 25% of the dense fp16 delta); compact (5%)."),
    budget: float | None = typer.Option(None, "--budget", min=0.01, max=100,
                                         help="File size limit in percent of the dense fp16 "
                                              "delta (e.g. 5), header included, replacing the "
                                              "preset's; a tune of the pack fits it too."),
    out: Path = typer.Option(..., "-o", "--out", help="Pack file to write (.safetensors)."),
    workers: int | None = typer.Option(None, "--workers", min=1,
                                       help="Tensors encoded at once, each on one thread "
                                            "(default: torch's thread count, fewer when three "
                                            "float32 copies of the largest tensor each would "
                                            "take over half the free memory). The file is the "
                                            "same whatever the number; memory grows with it."),
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

        summary = compress_checkpoint(base, tuned, chosen, out, progress=report, workers=workers)
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
    teacher: Path | None = typer.Option(
        None, "--teacher", help="The fine-tuned folder the pack was compressed from: tune "
        "towards its next-token distributions on the rows (KL) instead of the rows' answers."),
) -> None:
    """Tune a pack's float payload (group scales, gains, norms) on the skill's training rows;
    the codes stay fixed, so the tuned pack has the same size."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from ..curriculum.validate import load_rows
    from ..models import load_causal_lm
    from ..packs import read_pack
    from ..packs.tune import TuneConfig, tune_pack

    rows = load_rows(train)
    pf = read_pack(pack)
    model, tok = load_causal_lm(_base_of(pf, base))
    taught = load_causal_lm(teacher, fingerprint=False)[0] if teacher is not None else None
    with Progress(TextColumn("{task.description}"), BarColumn(),
                  TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(),
                  transient=True) as bar:
        task = bar.add_task("tuning", total=steps)

        def report(step: int, total: int, loss: float) -> None:
            bar.update(task, completed=step, description=f"tuning, loss {loss:.4f}")

        result = tune_pack(pf, model, tok, rows, out, TuneConfig(steps=steps, lr=lr), report,
                           teacher=taught)
    what = "training loss" if taught is None else "divergence from the teacher"
    typer.echo(f"wrote {result.path} ({result.bytes:,} bytes; {what} "
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
    packs: list[str] = typer.Argument(
        ..., help="Packs, each a file or a catalog pack (12, sort@v1), optionally @SCALE "
                  "(a.safetensors@0.5, sort@v1@0.5)."),
    base: Path | None = typer.Option(
        None, "--base", help="Base model folder; default: the first pack's base (the catalog's "
                             "for a catalog pack, else the folder recorded in the file)."),
    out: Path = typer.Option(..., "-o", "--out", help="Folder for the merged model."),
) -> None:
    """Apply packs to a base and write the merged model folder.

    Packs are decoded and added into the loaded base in place; no copy of the base is kept."""
    from ..packs import export_merged

    pairs = [_parse_pack_arg(p) for p in packs]
    found = _locate([name for name, _ in pairs])
    files = [_read(f) for f in found]  # every pack verified before the base is loaded
    export_merged(_base_of(files[0], base, found[0]),
                  [(pf, scale) for pf, (_, scale) in zip(files, pairs, strict=True)], out)
    typer.echo(f"wrote merged model to {out} ({len(pairs)} pack(s))")


def export(
    pack: str = typer.Argument(..., help=PACK_HELP),
    fmt: str = typer.Option(..., "--format", help="merged or peft."),
    out: Path = typer.Option(..., "-o", "--out", help="Output folder."),
    base: Path | None = typer.Option(None, "--base", help=BASE_HELP),
    scale: float = typer.Option(1.0, "--scale", help="Scale of the delta (merged only)."),
) -> None:
    """Export a pack as a merged model folder or a PEFT LoRA adapter."""
    from ..errors import unknown_name
    from ..packs import export_merged, export_peft

    if fmt not in FORMATS:
        raise unknown_name("export format", fmt, list(FORMATS))
    [found] = _locate([pack])
    pf = _read(found)
    base = _base_of(pf, base, found)
    if fmt == "merged":
        export_merged(base, [(pf, scale)], out)
    else:
        export_peft(pf, base, out)
    typer.echo(f"wrote {fmt} export to {out}")


def download(
    pack: str = typer.Argument(..., help=PACK_HELP),
    out: Path = typer.Option(
        ..., "-o", "--out",
        help="File to write; an existing folder gets SKILL-vN.safetensors (or the file's name)."),
) -> None:
    """Write a pack's SkillPack file, byte for byte.

    A catalog pack's blob is checked against its digest first, as the HTTP API's
    `GET /packs/{ref}/file` does; a pack file given as a path is verified and copied."""
    [found] = _locate([pack])
    if found.name is None:
        _read(found)  # a file given by path: a SkillPack, whole, before it is copied
    target = out / found.file_name if out.is_dir() else out
    if target.exists() and os.path.samefile(target, found.path):
        raise ConfigError(f"{str(target)!r} is the pack itself; pass another -o.")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.part")
    try:
        shutil.copyfile(found.path, tmp)
        os.replace(tmp, target)  # a reader never sees half a pack
    finally:
        tmp.unlink(missing_ok=True)
    typer.echo(f"wrote {found.name or pack} to {target} ({target.stat().st_size:,} bytes)")


def register(app: typer.Typer) -> None:
    """Attach this module's commands to the shared `pack` group."""
    for fn in (compress, tune, inspect, apply, export, download):
        PACK.app.command(fn.__name__)(fn)
