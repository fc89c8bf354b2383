"""CLI: `init`, `gc`, and registering and listing bases and skills."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import typer

from ..errors import NotFoundError
from ._common import JSON_OPTION, print_json, print_record, print_rows, short, workspace_session
from ._groups import BASE, SKILL


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


@BASE.app.command("add")
def base_add(name: str = typer.Argument(..., help="A short name, e.g. tiny-llama."),
             path: str = typer.Argument(...,
                                        help="Checkpoint folder, or a hub id (needs network)."),
             general_data: Path = typer.Option(
                 None, "--general-data",
                 help="Probe prompts of the behaviour suite: JSONL rows with \"prompt\" or "
                      "\"text\", or a text file, one prompt a line. Without it the base "
                      "samples its own prompts (seed 0)."),
             general_suite: bool = typer.Option(
                 True, "--general-suite/--no-general-suite",
                 help="Build the behaviour suite: agreement with the base's greedy answers "
                      "and KL(base || state), the general suite of jobs whose skills have no "
                      "skillstore_general.yaml beside their suite."),
             as_json: bool = JSON_OPTION) -> None:
    """Register a checkpoint as a target or source base model (hashes its weights) and build
    its behaviour suite under <home>/suites/NAME-behaviour/ (runs the model: seconds on a GPU)."""
    from dataclasses import asdict

    from ..behaviour import DEFAULT_PROMPTS, DEFAULT_TEXTS, build_for_checkpoint
    from ..catalog import register_base
    from ..catalog.registry import existing_base
    from ..catalog.serialize import base_dict
    from ..heldout import SUITES_DIR
    from ..intake import checkpoint_dir, checkpoint_info
    from ..settings import get_settings

    if general_data is not None and not general_suite:
        raise typer.BadParameter("--general-data builds the behaviour suite; drop "
                                 "--no-general-suite or --general-data.")
    info = checkpoint_info(path)  # hashed before the session opens
    with workspace_session() as (_, session):  # a name or weights clash fails before the build
        existing_base(session, name, info.fingerprint)
    behaviour = None
    if general_suite:
        typer.echo(f"Building the behaviour suite of base {name} (up to {DEFAULT_PROMPTS} prompts, "
                   f"{DEFAULT_TEXTS} KL texts, "
                   f"{'from ' + str(general_data) if general_data else 'self-sampled'})...",
                   err=True)
        behaviour = build_for_checkpoint(checkpoint_dir(path)[0],
                                         get_settings().home / SUITES_DIR, base=name,
                                         fingerprint=info.fingerprint, data=general_data)
    with workspace_session() as (_, session):
        doc = base_dict(register_base(session, name=name, behaviour=behaviour, **asdict(info)))
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
              data: Path = typer.Option(..., "--data",
                                        help="Prompt/answer rows (JSONL), one object a line."),
              suite: str = typer.Option(
                  "", help="Your own lm-eval task YAML that measures it (comma-separated for "
                           "several). Without one, a held-out test split of --data becomes "
                           "its suite and jobs train on the other rows only."),
              seed: int = typer.Option(None, min=0, show_default="0",
                                       help="Seed of the held-out split."),
              test_size: int = typer.Option(
                  None, "--test-size", min=1, show_default="792, at most a fifth of the rows",
                  help="Rows to hold out for the test split: at least 50, leaving at least 100 "
                       "to train on. The default is enough to see a 5-point drop at 80% "
                       "accuracy."),
              metric: str = typer.Option(
                  None, show_default="exact_match",
                  help="How the held-out task scores an answer: exact_match (the generated "
                       "line equals the answer), number (the first number in it equals the "
                       "answer's) or loglikelihood (the answer is the model's greedy "
                       "continuation)."),
              description: str = typer.Option("", help="One line about the skill."),
              store: bool = typer.Option(True, help="Copy the data into the blob store (the "
                                                    "held-out halves are always stored)."),
              as_json: bool = JSON_OPTION) -> None:
    """Register a skill with its training data (hashed) and the suite that measures it.

    Without --suite the rows are split in two (--seed, --test-size): the test half becomes an
    lm-eval task under <home>/suites/NAME/ scored by --metric, and `learn` trains on the rest.
    """
    from ..catalog.serialize import skill_dict
    from ..heldout import SUITES_DIR
    from ..intake import register_skill_dataset

    if not data.is_file():
        raise NotFoundError(f"Training data file {str(data)!r} does not exist.")
    with workspace_session() as (catalog, session):
        # Every line is validated (DatasetError names file and line) before anything is stored.
        row = register_skill_dataset(session, catalog.blobs, name=name, data=data, suite=suite,
                                     description=description, store=store,
                                     suites_dir=catalog.settings.home / SUITES_DIR, seed=seed,
                                     test_size=test_size, metric=metric)
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
