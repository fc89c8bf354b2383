"""CLI: `init`, `gc`, and registering and listing bases and skills."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path

import typer

from ..errors import ConfigError, NotFoundError
from ._common import JSON_OPTION, print_json, print_record, print_rows, short, workspace_session
from ._groups import BASE, SKILL

HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
HUB_PATTERNS = ["*.safetensors", "*.json", "*.txt", "*.model", "tokenizer*"]


def init(as_json: bool = JSON_OPTION) -> None:
    """Create the workspace and migrate the catalog to the latest schema (safe to repeat)."""
    from ..catalog import init_workspace
    from ..catalog.db import redact
    from ..catalog.migrate import head_revision

    catalog = init_workspace()
    catalog.close()
    s = catalog.settings
    doc = {"home": str(s.home), "database": redact(s.database_url), "blobs": s.blob_url,
           "schema_revision": head_revision()}
    if as_json:
        print_json(doc)
    else:
        typer.echo(f"Workspace ready at {s.home}\n  database: {doc['database']}\n"
                   f"  blobs:    {s.blob_url}\n  schema:   {doc['schema_revision']}")


def gc(yes: bool = typer.Option(False, "--yes", help="Delete; without it this is a dry run."),
       min_age_minutes: int = typer.Option(
           60, min=0, help="Keep unreferenced blobs younger than this (a running job's output)."),
       as_json: bool = JSON_OPTION) -> None:
    """Delete blobs that no catalog row refers to (a dry run unless --yes)."""
    from ..catalog import collect_garbage

    with workspace_session() as (catalog, session):
        report = collect_garbage(session, catalog.blobs, dry_run=not yes,
                                 min_age=timedelta(minutes=min_age_minutes))
    rows = [{"digest": b.digest, "size_bytes": b.size, "modified": b.modified,
             "deleted": b.digest in report.deleted} for b in report.unreferenced]
    if as_json:
        print_json({"dry_run": not yes, "unreferenced": rows, "kept": report.kept,
                    "too_young": [b.digest for b in report.too_young],
                    "stale_staging": report.stale_staging,
                    "freed_bytes": report.freed_bytes})
        return
    verb = "Deleted" if yes else "Would delete"
    total = sum(b.size for b in report.unreferenced)
    print_rows(rows, ["digest", "size_bytes", "modified"], as_json=False,
               title="Unreferenced blobs", empty="No unreferenced blobs.")
    typer.echo(f"{verb} {len(rows)} blob(s), {total} bytes, and {len(report.stale_staging)} "
               f"interrupted write(s); kept {report.kept} referenced, "
               f"{len(report.too_young)} younger than {min_age_minutes} min."
               + ("" if yes else " Run with --yes to delete."))


def _checkpoint_dir(path_or_id: str) -> tuple[Path, str]:
    """A local checkpoint folder and the uri to record: a path, or a hub id fetched to the cache."""
    path = Path(path_or_id).expanduser()
    if path.exists():
        if not path.is_dir():
            raise NotFoundError(f"{path_or_id!r} is a file; pass the checkpoint folder.")
        return path.resolve(), str(path.resolve())
    if not HUB_ID_RE.match(path_or_id) or path_or_id.startswith((".", "/", "~")):
        raise NotFoundError(f"Checkpoint folder {path_or_id!r} does not exist.")
    from huggingface_hub import snapshot_download

    try:
        local = snapshot_download(path_or_id, allow_patterns=HUB_PATTERNS)
    except Exception as exc:  # the hub client raises many types; all mean "not available"
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise NotFoundError(f"{path_or_id!r} is not a local folder and could not be fetched "
                            f"from the hub ({reason}); pass a local checkpoint folder.") from None
    return Path(local), path_or_id


def _architecture(folder: Path) -> str:
    config = folder / "config.json"
    if not config.is_file():
        raise NotFoundError(f"{str(folder)!r} is not a Hugging Face model folder (no config.json).")
    try:
        doc = json.loads(config.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{str(config)!r} is not valid JSON ({exc}).") from None
    return (doc.get("architectures") or [doc.get("model_type") or "unknown"])[0]


@BASE.app.command("add")
def base_add(name: str = typer.Argument(..., help="A short name, e.g. tiny-llama."),
             path: str = typer.Argument(..., help="Checkpoint folder, or a hub id (needs network)."),
             as_json: bool = JSON_OPTION) -> None:
    """Register a checkpoint as a target or source base model (hashes its weights)."""
    from ..catalog import register_base
    from ..catalog.serialize import base_dict
    from ..fingerprint import fingerprint_checkpoint, fingerprint_tokenizer

    folder, uri = _checkpoint_dir(path)
    architecture = _architecture(folder)
    fingerprint = fingerprint_checkpoint(folder)
    try:
        tok = fingerprint_tokenizer(folder)
    except NotFoundError:
        tok = None  # a source without a tokenizer is refused when a job needs it
    with workspace_session() as (_, session):
        row = register_base(session, name=name, uri=uri, architecture=architecture,
                            fingerprint=fingerprint, tokenizer_fingerprint=tok)
        doc = base_dict(row)
    print_record(doc, as_json=as_json, title=f"base {name}")


@BASE.app.command("list")
def base_list(as_json: bool = JSON_OPTION) -> None:
    """List registered base models."""
    from ..catalog import list_bases
    from ..catalog.serialize import base_dict

    with workspace_session() as (_, session):
        rows = [base_dict(b) for b in list_bases(session)]
    for r in rows if not as_json else ():
        r["fingerprint"] = short(r["fingerprint"])
    print_rows(rows, ["id", "name", "architecture", "fingerprint", "uri"], as_json=as_json,
               title="Base models", empty="No base models; add one with `skillstore base add`.")


@BASE.app.command("show")
def base_show(ref: str = typer.Argument(..., help="Base id or name."),
              as_json: bool = JSON_OPTION) -> None:
    """Show one base model."""
    from ..catalog import get_base
    from ..catalog.serialize import base_dict

    with workspace_session() as (_, session):
        doc = base_dict(get_base(session, ref))
    print_record(doc, as_json=as_json, title=f"base {doc['name']}")


@SKILL.app.command("add")
def skill_add(name: str = typer.Argument(..., help="A unique skill name, e.g. arith."),
              data: Path = typer.Option(..., "--data", help="Training data (JSONL)."),
              suite: str = typer.Option("", help="The lm-eval suite that measures it "
                                                 "(default: the skill name)."),
              description: str = typer.Option("", help="One line about the skill."),
              store: bool = typer.Option(True, help="Copy the data into the blob store."),
              as_json: bool = JSON_OPTION) -> None:
    """Register a skill with its training data (hashed) and its eval suite."""
    from ..catalog import add_skill
    from ..catalog.serialize import skill_dict
    from ..fingerprint import sha256_file

    if not data.is_file():
        raise NotFoundError(f"Training data file {str(data)!r} does not exist.")
    with workspace_session() as (catalog, session):
        digest = catalog.blobs.put_file(data) if store else sha256_file(data)
        row = add_skill(session, name=name, suite=suite or name, description=description,
                        data_uri=str(data.resolve()), data_sha256=digest)
        doc = skill_dict(row)
    print_record(doc, as_json=as_json, title=f"skill {name}")


@SKILL.app.command("list")
def skill_list(as_json: bool = JSON_OPTION) -> None:
    """List skills."""
    from ..catalog import list_skills
    from ..catalog.serialize import skill_dict

    with workspace_session() as (_, session):
        rows = [skill_dict(s) for s in list_skills(session)]
    print_rows(rows, ["id", "name", "suite", "description"], as_json=as_json, title="Skills",
               empty="No skills; add one with `skillstore skill add`.")


@SKILL.app.command("show")
def skill_show(ref: str = typer.Argument(..., help="Skill id or name."),
               as_json: bool = JSON_OPTION) -> None:
    """Show one skill."""
    from ..catalog import get_skill
    from ..catalog.serialize import skill_dict

    with workspace_session() as (_, session):
        doc = skill_dict(get_skill(session, ref))
    print_record(doc, as_json=as_json, title=f"skill {doc['name']}")


def register(app: typer.Typer) -> None:
    """Attach this module's commands to the root app and the shared groups."""
    from . import catalog_views

    app.command("init")(init)
    app.command("gc")(gc)
    catalog_views.register(app)
