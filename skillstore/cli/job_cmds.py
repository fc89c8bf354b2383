"""CLI for learning jobs: queue, start a worker, wait with a progress bar, cancel, retry; and
the demo."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from ..errors import ConfigError
from ..jobqueue import QUEUES, parse_queues, settings_env, worker_command
from ..settings import get_settings
from ._common import JSON_OPTION, print_json, workspace_session
from ._groups import JOB


def learn(skill: str = typer.Argument(..., help="Skill name or id."),
          base: str = typer.Option(..., "--base", help="Target base model (name or id)."),
          source: str | None = typer.Option(None, "--source", help="Source model for distill/dpo."),
          method: str = typer.Option("sft", help="sft, distill or dpo (SFT, then DPO)."),
          policy: str = typer.Option("balanced", help="Compression preset or policy JSON file."),
          start_from: str = typer.Option("base", "--start-from",
                                           help="base, or current: train on top of the head "
                                                "state's packs (only a state that sums its "
                                                "packs, router 'none')."),
          budget: float | None = typer.Option(None, min=0.01, max=100,
                                              help="Fit the pack in this percent of the dense "
                                                   "fp16 delta (budget mode, e.g. 25)."),
          tune_steps: int = typer.Option(0, "--tune-steps", min=0,
                                         help="After compressing, tune the pack's grids on the "
                                              "skill's training rows for this many steps (same "
                                              "bytes; docs/skillpack.md). 0: off."),
          tune_objective: str = typer.Option(
              "labels", "--tune-objective",
              help="What --tune-steps tune the pack toward: labels (the rows' answers) or "
                   "teacher (the job's own fine-tune's next-token distributions on the rows: "
                   "closer to the fine-tune's answers; docs/skillpack.md)."),
          general_suite: Path | None = typer.Option(None, help="The base's general suite YAML."),
          eval_limit: int | None = typer.Option(None, "--eval-limit", min=1,
                                                help="Evaluate at most this many prompts per "
                                                     "task."),
          max_steps: int | None = typer.Option(None, min=1,
                                               help="Steps of every training stage the method "
                                                    "runs (SFT, and DPO for dpo)."),
          lr: float | None = typer.Option(None, min=0, help="Peak learning rate of every stage."),
          batch_size: int | None = typer.Option(None, min=1, help="Batch size of every stage."),
          seed: int | None = typer.Option(None, help="Seed of every stage and of the source's "
                                                     "generation."),
          distill_prompts: int | None = typer.Option(
              None, "--distill-prompts", min=1,
              help="distill/dpo: how many training prompts the source answers (default: all)."),
          verify: bool = typer.Option(True, "--verify/--no-verify",
                                      help="distill/dpo: keep only answers the skill's checker "
                                           "accepts."),
          backend: str | None = typer.Option(
              None, "--backend", help="Training loop: auto (default: builtin for a small model "
                                      "on the CPU, TRL otherwise), builtin or trl."),
          gradient_checkpointing: bool = typer.Option(
              False, "--gradient-checkpointing",
              help="Recompute activations in the backward pass: less memory, more compute."),
          train_options: list[str] = typer.Option(
              [], "--train", metavar="KEY=VALUE",
              help="Any other SFT setting, e.g. --train warmup_frac=0.1 (repeatable; "
                   "docs/learning.md lists them)."),
          dpo_options: list[str] = typer.Option(
              [], "--dpo", metavar="KEY=VALUE", help="A DPO setting, e.g. --dpo beta=0.2."),
          generation_options: list[str] = typer.Option(
              [], "--generation", metavar="KEY=VALUE",
              help="How the source answers, e.g. --generation do_sample=true."),
          gate_options: list[str] = typer.Option(
              [], "--gate", metavar="KEY=VALUE", help=(
                  "A gate policy setting: min_gain, min_fidelity, max_drop, max_general_drop, "
                  "confidence, power; e.g. --gate max_drop=0.02 (docs/composition.md).")),
          as_json: bool = JSON_OPTION) -> None:
    """Queue a learning job (prepare, train, compress, evaluate, gate) and print its id.

    Every option is validated before anything is queued; a bad one is one `error:` line.
    """
    from ..pipeline import LearnRequest, queue

    request = LearnRequest.build(
        skill, base, method=method, source=source, policy=policy, start_from=start_from,
        budget=None if budget is None else budget / 100, tune_steps=tune_steps,
        tune_objective=tune_objective,
        general_suite=str(general_suite) if general_suite else None, eval_limit=eval_limit,
        distill_prompts=distill_prompts, verify=verify, backend=backend,
        gradient_checkpointing=gradient_checkpointing, max_steps=max_steps, lr=lr,
        batch_size=batch_size, seed=seed, sft=parse_key_values(train_options, "--train"),
        dpo=parse_key_values(dpo_options, "--dpo"),
        generation=parse_key_values(generation_options, "--generation"),
        gate=parse_key_values(gate_options, "--gate") or None)
    with workspace_session() as (catalog, session):
        job_id = queue(session, catalog.settings, request).id
    if as_json:
        print_json({"job_id": job_id})
    else:
        typer.echo(job_id)


def parse_key_values(items: list[str], flag: str) -> dict:
    """``["lr=0.01", "patience=3"]`` -> ``{"lr": 0.01, "patience": 3}``; values are JSON when
    they parse as JSON (numbers, booleans), plain strings otherwise. The trainer's own config
    validates names and types when the job is queued."""
    import json

    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{flag} {item!r} is not KEY=VALUE; write e.g. {flag} lr=0.001.")
        try:
            out[key.strip()] = json.loads(raw)
        except ValueError:
            out[key.strip()] = raw
    return out


@JOB.app.command("wait")
def job_wait(job_ids: list[int] = typer.Argument(..., help="Job id(s)."),
             timeout: float | None = typer.Option(None, help="Give up after this many seconds."),
             quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar.")) -> None:
    """Wait for jobs with a live progress bar; exits 1 unless every job succeeded."""
    from ..catalog import JobStatus, open_catalog
    from .job_watch import follow_jobs

    with open_catalog() as catalog:
        final = follow_jobs(catalog, job_ids, timeout=timeout, quiet=quiet)
    bad = {j: s for j, s in final.items() if s != JobStatus.succeeded}
    if bad:
        typer.echo("; ".join(f"job {j} {s.value}" for j, s in bad.items()), err=True)
        raise typer.Exit(1)


@JOB.app.command("cancel")
def job_cancel(job_id: str = typer.Argument(..., help="Job id.")) -> None:
    """Cancel a queued or running job; a running step stops at its next progress report."""
    from ..pipeline import cancel

    with workspace_session() as (catalog, session):
        job = cancel(session, job_id)
        typer.echo(f"job {job.id} cancelled at stage {job.stage or 'queued'}")


@JOB.app.command("retry")
def job_retry(job_id: str = typer.Argument(..., help="Job id.")) -> None:
    """Queue a failed or cancelled job again, from the stage where it stopped."""
    from ..pipeline import retry

    with workspace_session() as (catalog, session):
        job = retry(session, catalog.settings, job_id)
        typer.echo(f"job {job.id} queued again from {job.stage or 'prepare'}")


def worker(
    queues: str = typer.Option(",".join(QUEUES), "--queues", "-Q",
                               help="Comma-separated queues to serve: gpu, cpu or both."),
    concurrency: int = typer.Option(1, "--concurrency", "-c", min=1,
                                    help="Worker processes; one per GPU is usual."),
    pool: str = typer.Option("prefork", help="Celery pool: prefork, solo or threads."),
    loglevel: str = typer.Option("INFO", "--loglevel", "-l"),
) -> None:
    """Start a real Celery worker on this machine, serving the given queues."""
    settings = get_settings()
    argv = worker_command(parse_queues(queues), concurrency, pool=pool, loglevel=loglevel)
    os.execvpe(argv[0], argv, settings_env(settings))


def demo(skills: str = typer.Option("", help="Comma-separated curriculum skills (default: all)."),
         timeout: float = typer.Option(1800, help="Give up after this many seconds.")) -> None:
    """The whole service on the embedded default: the zoo, the built-in `demo` experiment
    (graft, naive_ft, multi_lora) on a real worker, its graft packs adopted through the gate,
    the methods compared, lineage and reports."""
    from .demo import run_demo

    run_demo(get_settings(), skills=[s for s in skills.split(",") if s] or None, timeout=timeout)


def register(app: typer.Typer) -> None:
    """Attach the job-queue commands to the root app."""
    app.command("learn")(learn)
    app.command("worker")(worker)
    app.command("demo")(demo)
