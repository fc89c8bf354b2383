"""`skillstore demo`: the whole service on the embedded default, zoo to forgetting report."""

from __future__ import annotations

import json
import os
import time
from contextlib import redirect_stderr

import sqlalchemy as sa
from rich.console import Console
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from ..catalog import (
    JobStatus,
    PackStatus,
    get_base,
    inconclusive_packs,
    init_workspace,
    status_label,
)
from ..catalog.models import Experiment, LineageEdge, Skill, SkillPack
from ..errors import ConfigError
from ..jobqueue import spawn_worker, stop_worker
from ..settings import Settings

BASE = "tiny-llama"
# The built-in spec the demo runs (skillstore/experiments/specs/demo.yaml): the five curriculum
# skills under graft (packs at 5% of the dense delta, tuned), naive_ft and multi_lora, one seed.
SPEC = "demo"
# One worker of two pool processes: the graft run on one core, the two baselines in turn on
# the other; the graft run's adoption goes on here while the second baseline still trains.
CONCURRENCY = 2


def _demo_spec(skills: list[str] | None):
    """The built-in demo spec, its curriculum cut to ``skills`` (in the spec's order)."""
    from ..experiments import load_spec

    spec = load_spec(SPEC)
    if not skills:
        return spec
    unknown = sorted(set(skills) - {s.name for s in spec.skills})
    if unknown:
        raise ConfigError(f"The demo has no skill {', '.join(map(repr, unknown))}; choose among "
                          f"{', '.join(s.name for s in spec.skills)}.")
    return spec.model_copy(update={"skills": tuple(s for s in spec.skills if s.name in skills)})


def _experiment(session, settings: Settings, spec, blobs) -> tuple[Experiment, bool]:
    """The newest experiment of exactly this spec that did not fail (a second demo reuses it,
    packs and verdicts included), else a new one queued; and whether it was queued now."""
    from ..experiments.catalog import spec_digest
    from ..experiments.queue import queue_experiment

    found = session.scalar(sa.select(Experiment).where(
        Experiment.spec_sha256 == spec_digest(spec.as_json()),
        Experiment.status.in_([JobStatus.queued, JobStatus.running, JobStatus.succeeded]))
        .order_by(Experiment.id.desc()).limit(1))
    if found is not None:
        return found, False
    return queue_experiment(session, settings, spec, blobs=blobs), True


def _base_packs(session, base) -> list[tuple[SkillPack, Skill, str]]:
    """The base's packs in order, each with its skill and its status as shown
    (`status_label`: "inconclusive" where the gate could not decide)."""
    packs = list(session.scalars(
        sa.select(SkillPack).where(SkillPack.base_id == base.id).order_by(SkillPack.id)))
    undecided = inconclusive_packs(session, [p.id for p in packs])
    return [(p, session.get(Skill, p.skill_id), status_label(p.status, p.id in undecided))
            for p in packs]


def _lineage(session, base) -> Tree:
    tree = Tree(f"[bold]{base.name}[/] (base, {base.architecture})")
    for p, skill, status in _base_packs(session, base):
        edges = session.scalars(sa.select(LineageEdge).where(LineageEdge.child_id == p.id))
        via = [f"{e.kind.value} {get_base(session, e.parent_base_id).name}" for e in edges
               if e.parent_base_id is not None and e.parent_base_id != base.id]
        colour = {"promoted": "green", "rejected": "red"}.get(status, "yellow")
        tree.add(f"{skill.name}@v{p.version} [{colour}]{status}[/] {p.method}"
                 + (f" ({', '.join(via)})" if via else ""))
    return tree


def _matrix_table(title: str, skills: list[str], matrix: list[list[float | None]]) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("after learning")
    for name in skills:
        table.add_column(name, justify="right")
    for name, row in zip(skills, matrix, strict=True):
        table.add_row(name, *("—" if v is None else f"{v:.2f}" for v in row))
    return table


def _packs_table(session, base) -> tuple[Table, list[dict]]:
    rows = [{"pack": f"{skill.name}@v{p.version}", "status": status, "method": p.method,
             "bytes": p.size_bytes, "dense": (p.metrics or {}).get("dense_fp16_bytes", 0),
             "ratio": p.compression_ratio, "rel_error": (p.metrics or {}).get("rel_error")}
            for p, skill, status in _base_packs(session, base)]
    return _packs_rows_table(rows), rows


def _packs_rows_table(rows: list[dict]) -> Table:
    """The packs table; the name and status columns are never cut, even at 80 columns
    ("knowledge@v1", "inconclusive"): the numbers' headers wrap instead."""
    table = Table(title="SkillPacks", title_justify="left")
    for col in ("pack", "status", "method"):
        table.add_column(col, no_wrap=True,
                         min_width=max([len(col), *(len(str(r[col])) for r in rows)]))
    for col in ("bytes", "dense fp16 delta", "ratio", "rel. error"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r["pack"], r["status"], r["method"], f"{r['bytes']:,}", f"{r['dense']:,}",
                      f"{r['ratio'] or 0:.1f}x", f"{r['rel_error'] or 0:.3f}")
    return table


def _html_report(catalog, settings: Settings):
    """The head state's report from skillstore.reports, as `skillstore report --state`
    renders it."""
    from ..catalog import current_head, get_state
    from ..reports.data import build_report
    from ..reports.render import render_report

    with catalog.session() as s:
        head = current_head(s, get_base(s, BASE).id)
        if head is None:
            return None
        data = build_report(s, state=get_state(s, head.state_id), blobs=catalog.blobs)
    data.title = "skillstore demo: the promoted SkillPack state"
    out = settings.home / "reports" / "demo.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_report(data, "html"), encoding="utf-8")
    return out


def _template_table(doc: dict) -> Table:
    """The head state's score by kind of template, under its learned router and under the tag
    oracle, from the per-prompt outcomes its evaluations stored (demo_templates)."""
    table = Table(title="Head state by kind of prompt template (test split): learned router "
                  "against the tag oracle", title_justify="left")
    for column in ("skill", "template kind", "n", "routed", "oracle (tag)"):
        table.add_column(column, justify="left" if column in ("skill", "template kind")
                         else "right")
    for row in doc["by_kind"]:
        table.add_row(row["skill"], row["kind"], str(row["n"]), f"{row['routed']:.2f}",
                      f"{row['oracle']:.2f}")
    return table


def _held_out_lines(doc: dict) -> list[str]:
    lines = []
    held = doc.get("held_out")
    if held:
        ratio = "—" if held["ratio"] is None else f"{held['ratio']:.3f}"
        lines.append(f"held-out templates, all skills (n={held['n']}): routed {held['routed']:.3f}"
                     f", oracle {held['oracle']:.3f}, ratio {ratio}; routed - oracle "
                     f"{held['difference']:+.3f} [{held['low']:+.3f}, {held['high']:+.3f}]")
    lines.append(_metrics_line("routed, held-out templates", doc["held_out_matrix"]))
    return lines


def _metrics_line(name: str, doc: dict) -> str:
    """The matrix's average accuracy, over every skill when each was scored (on held-out
    templates only the head's skills are), else over the learned ones; and BWT and forgetting,
    which need two learned skills."""
    m = doc.get("metrics") or {}
    n_learned = sum(doc.get("held") or [])
    if m.get("average_accuracy") is not None:
        acc = f"avg acc {m['average_accuracy']:.3f} (all {len(doc['skills'])} skills)"
    elif m.get("learned_average_accuracy") is not None:
        acc = f"avg acc {m['learned_average_accuracy']:.3f} (the {n_learned} learned skill(s))"
    else:
        acc = "avg acc — (no skill learned)"
    if m.get("bwt") is None:
        return f"{name:<28} {acc}; BWT and forgetting need two learned skills"
    return (f"{name:<28} {acc}   BWT {m['bwt']:+.3f}   forgetting {m['forgetting']:.3f} "
            "(learned skills)")


def _methods_table(doc: dict) -> Table:
    """Each method's final-row figures from the experiment report (one seed: no intervals)."""
    table = Table(title=f"Methods (experiment {doc['experiment']['id']}, seed "
                  f"{', '.join(map(str, doc['methods'][0]['seeds']))}; lm-eval on the same "
                  "test prompts)", title_justify="left")
    for col in ("method", "avg accuracy", "BWT", "forgetting", "bytes per skill"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for m in doc["methods"]:  # BWT and forgetting are None with a single skill
        table.add_row(m["label"], *(_mean(m[k], fmt) for k, fmt in (
            ("average_accuracy", ".3f"), ("bwt", "+.3f"), ("forgetting", ".3f"),
            ("bytes_per_skill", ",.0f"))))
    return table


def _mean(stat: dict | None, fmt: str) -> str:
    mean = (stat or {}).get("mean")
    return "—" if mean is None else format(mean, fmt)


def _paired_lines(doc: dict) -> list[str]:
    return [f"{c['graft']} - {c['baseline']} on the final row: {c['difference']:+.3f} "
            f"[{c['low']:+.3f}, {c['high']:+.3f}] (paired bootstrap, n={c['n']} skills; "
            f"{c['test']} p={c['p_value']:.3g}, Holm {c['holm_p']:.3g})"
            for c in doc["paired_tests"]["comparisons"]]


def _adopt_and_score(catalog, settings: Settings, run_id: int, curriculum, limit: int | None,
                     progress=None) -> dict:
    """Adopt the graft run ``run_id`` (experiments.adopt: its packs through the gate, in
    order), then score the head it leaves by kind of prompt template (demo_templates)."""
    from ..catalog.models import ExperimentRun
    from ..experiments.adopt import adopt_run
    from .demo_templates import template_report

    with catalog.session() as s, open(settings.home / "eval.log", "a") as quiet, \
            redirect_stderr(quiet):
        adopted = adopt_run(s, settings, catalog.blobs, s.get(ExperimentRun, run_id),
                            progress=progress)
        if progress is not None:
            progress("the head by prompt template", 1.0)
        templates = template_report(s, settings, get_base(s, BASE), curriculum, limit=limit)
    return {"adopted": adopted, "templates": templates}


def _adopt_on_finish(catalog, settings: Settings, curriculum, limit: int | None, out: dict):
    """on_finished for follow_runs: when the graft run succeeds, adopt it and score the head
    (`_adopt_and_score`), a bar line of its own, while the other runs still train."""
    def on_finished(run, bar) -> None:
        if run.method != "graft" or run.status != JobStatus.succeeded:
            return
        task = bar.add_task(f"adopt run {run.id}'s packs through the gate", total=1.0,
                            state="")
        out.update(_adopt_and_score(
            catalog, settings, run.id, curriculum, limit,
            progress=lambda name, done: bar.update(task, completed=done, state=name)))
        promoted = sum(a.verdict == "promoted" for a in out["adopted"])
        bar.update(task, completed=1.0, state=f"{promoted} of {len(out['adopted'])} promoted")
    return on_finished


def run_demo(settings: Settings, *, skills: list[str] | None = None, timeout: float = 1800) -> None:
    """Run the built-in `demo` experiment on a real worker, adopt its graft run's packs through
    the gate, and report; a second run reuses the experiment and everything it decided."""
    from ..experiments.catalog import get_experiment
    from ..experiments.report import build_experiment_report, render_experiment_report
    from ..zoo import build_zoo, register_zoo
    from .job_watch import follow_runs

    for var in ("TQDM_DISABLE", "HF_DATASETS_DISABLE_PROGRESS_BARS",
                "HF_HUB_DISABLE_PROGRESS_BARS"):
        os.environ.setdefault(var, "1")  # lm-eval's and transformers' bars would bury the demo's
    import torch

    # One intra-op thread, here and in the worker: tiny models gain nothing from more, and an
    # OpenMP pool that spins on a busy CPU runs them an order of magnitude slower.
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    console = Console()
    t0 = time.perf_counter()
    spec = _demo_spec(skills)
    catalog = init_workspace(settings)
    console.print(f"[bold]workspace[/] {settings.home}  (catalog, blobs and broker all embedded)")
    with console.status("building the tiny zoo (cached after the first run)..."):
        zoo = build_zoo(settings.home)
    with catalog.session() as s:
        register_zoo(s, catalog.blobs, zoo, base=BASE)
        experiment, queued = _experiment(s, settings, spec, catalog.blobs)
        experiment_id = experiment.id
        runs = ", ".join(f"{r.method}/{r.seed}" for r in experiment.runs)
        # A reused experiment whose runs have all finished needs no worker.
        pending = any(not JobStatus(r.status).finished for r in experiment.runs)
    console.print(f"zoo ready in {time.perf_counter() - t0:.0f}s: target {zoo.target.name}, "
                  f"source {', '.join(zoo.sources)}")
    names = ", ".join(stage.name for stage in spec.skills)
    console.print(f"experiment {experiment_id} ({SPEC} spec: {names}) "
                  f"{'queued' if queued else 'reused'}: runs {runs}")
    adoption: dict = {}
    worker = spawn_worker(settings, concurrency=CONCURRENCY,
                          log_path=settings.home / "worker.log") if pending else None
    try:
        t_runs = time.perf_counter()
        final = follow_runs(catalog, experiment_id, timeout=timeout, console=console,
                            on_finished=_adopt_on_finish(catalog, settings, zoo.load_curriculum(),
                                                         spec.eval_limit, adoption))
        console.print(f"runs finished in {time.perf_counter() - t_runs:.0f}s"
                      + (f" (worker log: {settings.home / 'worker.log'})" if worker else
                         " (all had finished before: no worker started)"))
    finally:
        if worker is not None:
            stop_worker(worker)
    with catalog.session() as s:
        doc = build_experiment_report(s, get_experiment(s, experiment_id))
        graft = next((r.id for r in get_experiment(s, experiment_id).runs
                      if r.method == "graft" and final.get(r.id) == JobStatus.succeeded), None)
    if not adoption and graft is not None:  # a reused experiment: its verdicts are kept
        adoption = _adopt_and_score(catalog, settings, graft, zoo.load_curriculum(),
                                    spec.eval_limit)
    adopted, templates = adoption.get("adopted", []), adoption.get("templates")
    with catalog.session() as s:
        base = get_base(s, BASE)
        console.print(_methods_table(doc))
        for m in doc["methods"]:
            console.print(_matrix_table(f"{m['label']}: R[i][j] = lm-eval score on skill j "
                                        "after stage i", m["skills"], m["accuracy_matrix"]))
        for line in _paired_lines(doc):
            console.print(line)
        console.print(_lineage(s, base))
        for a in adopted:
            colour = {"promoted": "green", "rejected": "red"}.get(a.verdict, "yellow")
            head, why = a.line.split(": ", 1)
            console.print(Text.assemble((head, colour), f": {why}"), highlight=False)
        packs_table, _ = _packs_table(s, base)
        promoted = s.scalar(sa.select(sa.func.count()).select_from(SkillPack)
                            .where(SkillPack.status == PackStatus.promoted))
    if templates is not None:
        out = settings.home / "reports" / "demo_templates.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(templates, indent=2) + "\n", encoding="utf-8")
        console.print(_template_table(templates))
        for line in _held_out_lines(templates):
            console.print(line)
    console.print(packs_table)
    report = settings.home / "reports" / "demo-experiment.html"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(render_experiment_report(doc, "html"), encoding="utf-8")
    html = _html_report(catalog, settings)
    console.print(f"{promoted} pack(s) promoted. HTML reports: {report} (the methods)"
                  + (f", {html} (the promoted state)" if html is not None
                     else "; no state was promoted, so there is no state report"))
    console.print(f"demo finished in {time.perf_counter() - t0:.0f}s")
    catalog.close()
