"""`skillstore experiment validate | run | list | show | wait | cancel | adopt | report`:
experiment specs, their runs on the workers, adopting a graft run's packs through the gate,
and the comparison report."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.console import Console

from ..catalog.schema import JobStatus
from ._common import JSON_OPTION, print_json, print_record, print_rows, workspace_session
from ._groups import EXPERIMENT

POLL_S = 1.0
SpecArg = typer.Argument(..., metavar="SPEC", help="Experiment spec: a YAML file, or the name "
                         "of a built-in spec (skillstore/experiments/specs: demo, full, hetero).")
RefArg = typer.Argument(..., metavar="ID", help="Experiment id or name (the newest of it).")


def validate(spec_path: Path = SpecArg,
             as_json: bool = typer.Option(False, "--json",
                                          help="Print the spec and its runs as JSON.")) -> None:
    """Validate a spec against its schema and the catalog (base, sources, skills); print the
    (method, seed) runs it asks for. Nothing is queued."""
    from ..experiments import check_spec, load_spec

    spec = load_spec(spec_path)
    with workspace_session() as (_, session):
        check_spec(session, spec)
    runs = spec.runs()
    if as_json:
        print_json({"spec": spec.as_json(),
                    "runs": [{"method": m, "seed": s} for m, s in runs]})
        return
    typer.echo(f"experiment {spec.name}: base {spec.base}, {len(spec.skills)} skill(s) "
               f"({', '.join(s.name for s in spec.skills)}), {len(runs)} run(s)")
    for method, seed in runs:
        settings = ", ".join(f"{k}={v}" for k, v in spec.settings(method).model_dump().items())
        typer.echo(f"  {method:<16} seed {seed:<4} {settings}")


def run(spec_path: Path = SpecArg, as_json: bool = JSON_OPTION) -> None:
    """Check a spec, store it with one run per (method, seed), and queue every run on the
    workers; a method that cannot run yet is refused before anything is queued."""
    from ..catalog.serialize import experiment_dict
    from ..experiments import load_spec
    from ..experiments.queue import queue_experiment

    spec = load_spec(spec_path)
    with workspace_session() as (catalog, session):
        experiment = queue_experiment(session, catalog.settings, spec, blobs=catalog.blobs)
        doc = experiment_dict(experiment)
    if as_json:
        print_json(doc)
        return
    runs = ", ".join(f"{r['method']}/{r['seed']}" for r in doc["runs"])
    typer.echo(f"experiment {doc['id']} queued: {len(doc['runs'])} run(s) ({runs}); follow it "
               f"with `skillstore experiment wait {doc['id']}`")


def _summary(doc: dict) -> dict:
    done = sum(n for s, n in doc["run_counts"].items() if s not in ("queued", "running"))
    return {**doc, "runs": f"{done}/{len(doc['runs'])}",
            "failed": doc["run_counts"].get("failed", 0)}


def list_(status: JobStatus | None = typer.Option(None, help="Only experiments of this status."),
          limit: int = typer.Option(50, min=1, help="At most this many, newest first."),
          as_json: bool = JSON_OPTION) -> None:
    """Experiments, newest first, with how many of their runs finished and failed."""
    from ..catalog.serialize import experiment_dict
    from ..experiments.catalog import list_experiments

    with workspace_session() as (_, session):
        rows = [experiment_dict(e) for e in list_experiments(session, status=status,
                                                             limit=limit)]
    if as_json:
        print_json([{k: v for k, v in r.items() if k != "spec"} for r in rows])
        return
    print_rows([_summary(r) for r in rows],
               ("id", "name", "status", "runs", "failed", "created_at", "finished_at"),
               as_json=False, title="Experiments",
               empty="No experiments yet; queue one with `skillstore experiment run SPEC`.")


def _run_row(r: dict) -> dict:
    result = r["result"] or {}
    metrics = result.get("metrics") or {}
    sizes = list((result.get("bytes_per_skill") or {}).values())
    seconds = result.get("seconds")
    status = r["status"].value
    if r["status"] == JobStatus.running and r["stage"]:  # its step, as the worker reports it
        status = r["stage"] + ("" if r["progress"] is None else f" {r['progress']:.0%}")
    return {**r, "status": status, "avg acc": _rounded(metrics.get("average_accuracy")),
            "bwt": _rounded(metrics.get("bwt")),
            "bytes/skill": round(sum(sizes) / len(sizes)) if sizes else None,
            "secs": None if seconds is None else round(seconds), "state": r["state_id"]}


def _rounded(value: float | None) -> str | None:
    return None if value is None else f"{value:.3f}"


def _pack_rows(runs: list[dict]) -> list[dict]:
    """A row per catalog pack the runs made (a graft run's), named as `pack show` takes it."""
    return [{"run": r["id"], "seed": r["seed"], "skill": p["skill"], "pack": p["name"],
             "bytes": p["bytes"], "ratio": round(p["dense_fp16_bytes"] / max(1, p["bytes"]), 1),
             "rel_error": round(p["rel_error"], 4)}
            for r in runs for p in (r["result"] or {}).get("packs", ()) if "name" in p]


def show(ref: str = RefArg, as_json: bool = JSON_OPTION) -> None:
    """One experiment: its status and every run with its status (a running run: its step and
    how far it is), error, key metrics, and the catalog packs and model state it made."""
    from ..catalog.serialize import experiment_dict
    from ..experiments.catalog import get_experiment

    with workspace_session() as (_, session):
        doc = experiment_dict(get_experiment(session, ref))
    if as_json:
        print_json(doc)
        return
    head = {k: doc[k] for k in ("id", "name", "status", "base_id", "spec_sha256", "created_at",
                                "finished_at")}
    print_record(head, as_json=False, title=f"Experiment {doc['id']}")
    # 80 columns: forgetting and FWT are in `experiment report`, errors on lines of their own
    print_rows([_run_row(r) for r in doc["runs"]],
               ("id", "method", "seed", "status", "avg acc", "bwt", "bytes/skill", "secs",
                "state"), as_json=False, compact=True,
               title="Runs (a graft run's final state: `skillstore state show STATE`)")
    console = Console()
    for r in doc["runs"]:
        if r["error"]:
            console.print(f"run {r['id']} ({r['method']}, seed {r['seed']}) "
                          f"{r['status'].value}: {r['error']}", markup=False, highlight=False)
    if packs := _pack_rows(doc["runs"]):
        print_rows(packs, ("run", "seed", "skill", "pack", "bytes", "ratio", "rel_error"),
                   as_json=False, title="Packs in the catalog (`skillstore pack show PACK`)")


def wait(ref: str = RefArg,
         timeout: float | None = typer.Option(None, help="Give up after this many seconds."),
         quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress lines.")) -> None:
    """Wait for every run to finish, printing progress; exits 1 unless every run succeeded."""
    from ..catalog import open_catalog
    from ..catalog.serialize import experiment_dict
    from ..errors import JobError
    from ..experiments.catalog import get_experiment

    deadline = None if timeout is None else time.monotonic() + timeout
    last = None
    with open_catalog() as catalog:
        while True:
            with catalog.session() as session:
                doc = experiment_dict(get_experiment(session, ref))
            counts = ", ".join(f"{s} {n}" for s, n in sorted(doc["run_counts"].items()))
            line = f"experiment {doc['id']} {doc['status'].value}: {counts}"
            if line != last and not quiet:
                typer.echo(line)
            last = line
            if doc["status"].finished:
                break
            if deadline is not None and time.monotonic() > deadline:
                raise JobError(f"Timed out waiting for experiment {doc['id']} ({counts}); is a "
                               "worker running? Start one with `skillstore worker`.")
            time.sleep(POLL_S)
    bad = [r for r in doc["runs"] if r["status"] != JobStatus.succeeded]
    for r in bad:
        why = f": {r['error']}" if r["error"] else ""
        typer.echo(f"run {r['id']} {r['method']} seed {r['seed']} {r['status'].value}{why}",
                   err=True)
    if bad:
        raise typer.Exit(1)


def cancel(ref: str = RefArg) -> None:
    """Cancel an experiment's queued and running runs; finished runs keep their results."""
    from ..catalog.serialize import experiment_dict
    from ..experiments.catalog import cancel_experiment

    with workspace_session() as (_, session):
        doc = experiment_dict(cancel_experiment(session, ref))
    typer.echo(f"experiment {doc['id']} {doc['status'].value}: "
               + ", ".join(f"{s} {n}" for s, n in sorted(doc["run_counts"].items())))


def adopt(ref: str = RefArg,
          run_id: int | None = typer.Option(None, "--run", help="The graft run to adopt; "
                                            "needed when the experiment has several (seeds)."),
          as_json: bool = JSON_OPTION) -> None:
    """Put a succeeded graft run's packs through the gate, in curriculum order: each is judged
    on the base's current state plus the pack (the spec's router retrained), against that
    state on the same prompts and the general suite, with the spec's gate policy and its
    fine-tune's scores. A promoted pack moves the head; a second adopt judges only what is
    left."""
    from ..experiments.adopt import adopt_run, graft_run

    with workspace_session() as (catalog, session):
        outcomes = adopt_run(session, catalog.settings, catalog.blobs,
                             graft_run(session, ref, run_id))
    if as_json:
        print_json([a.as_json() for a in outcomes])
        return
    for a in outcomes:
        typer.echo(a.line)
    promoted = sum(a.verdict == "promoted" for a in outcomes)
    typer.echo(f"{promoted} of {len(outcomes)} pack(s) promoted; `skillstore state list` shows "
               "the states, `skillstore report --pack PACK` each decision.")


def report(ref: str = RefArg,
           fmt: str = typer.Option("md", "--format", "-f", help="md, html or json."),
           out: Path | None = typer.Option(None, "-o", "--out",
                                           help="Write here instead of stdout.")) -> None:
    """The comparison report: every method's metrics and bytes per skill over seeds with 95%
    intervals, mean accuracy matrices, paired tests of graft, failed and unfinished runs."""
    from ..experiments.catalog import get_experiment
    from ..experiments.report import (
        EXPERIMENT_REPORT_FORMATS,
        build_experiment_report,
        render_experiment_report,
    )

    EXPERIMENT_REPORT_FORMATS[fmt]  # an unknown format is refused before the catalog is read
    with workspace_session() as (_, session):
        doc = build_experiment_report(session, get_experiment(session, ref))
    text = render_experiment_report(doc, fmt)
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text, encoding="utf-8")
        typer.echo(f"Wrote {out}")


def register(app: typer.Typer) -> None:
    """Attach the experiment commands to the EXPERIMENT group."""
    for name, command in (("validate", validate), ("run", run), ("list", list_),
                          ("show", show), ("wait", wait), ("cancel", cancel),
                          ("adopt", adopt), ("report", report)):
        EXPERIMENT.app.command(name)(command)
