"""The comparison report of an experiment: every method's metrics over seeds with intervals,
its mean accuracy matrix, accuracy against bytes, paired tests of graft against each baseline.

`build_experiment_report` reads the runs into one JSON document and rounds every number to what
the report shows; the formats (`EXPERIMENT_REPORT_FORMATS`: md, html, json) only lay that
document out, so the JSON holds exactly the numbers the Markdown and the HTML print.
"""

from __future__ import annotations

import html
import json
import math
from typing import Protocol

from sqlalchemy.orm import Session

from ..catalog.models import BaseCheckpoint, Experiment, ExperimentRun
from ..catalog.schema import JobStatus
from ..errors import JobError
from ..evaluation.stats import (
    SIGN_FLIP_SAMPLES,
    holm,
    mean_interval,
    paired_bootstrap,
    sign_flip_p,
)
from ..registry import Registry
from .fusion_report import fusion_sections, fusion_table
from .overhead import orchestration

FORMAT_VERSION = 1
CONFIDENCE = 0.95
BOOTSTRAP_ITERATIONS = 2000
DIGITS = 4  # metrics, differences and intervals; matrix cells show 3, bytes whole numbers
METRICS = {"average_accuracy": "average accuracy", "bwt": "BWT", "forgetting": "forgetting",
           "forward_transfer": "FWT"}


def _group_key(run: ExperimentRun) -> str:
    """The method, with the graft policy when the run recorded one (one point per policy)."""
    policy = run.result.get("policy")
    return f"{run.method} ({policy})" if policy else run.method


def _final_row(result: dict) -> dict[str, float]:
    return dict(zip(result["skills"], result["accuracy_matrix"][-1], strict=True))


def _mean_matrix(results: list[dict]) -> list[list[float | None]]:
    """Cell by cell over the seeds, 3 decimals; a cell no run measured stays None."""
    rows = len(results[0]["accuracy_matrix"])
    cols = len(results[0]["skills"])
    matrices = [r["accuracy_matrix"] for r in results if len(r["accuracy_matrix"]) == rows]
    out = []
    for i in range(rows):
        row = []
        for j in range(cols):
            cells = [m[i][j] for m in matrices if m[i][j] is not None]
            row.append(round(sum(cells) / len(cells), 3) if cells else None)
        out.append(row)
    return out


def _method(label: str, runs: list[ExperimentRun]) -> dict:
    results = [r.result for r in runs]
    row = {"label": label, "method": runs[0].method, "policy": results[0].get("policy"),
           "seeds": [r.seed for r in runs], "n_seeds": len(runs), "skills": results[0]["skills"]}
    for key in METRICS:  # joint has no BWT, forgetting or FWT: those stay None
        values = [v for v in ((r.get("metrics") or {}).get(key) for r in results)
                  if v is not None]
        row[key] = mean_interval(values) if values else None
    sizes = [sum(r["bytes_per_skill"].values()) / len(r["bytes_per_skill"]) for r in results
             if r.get("bytes_per_skill")]
    row["bytes_per_skill"] = mean_interval(sizes, None) if sizes else None
    row["accuracy_matrix"] = _mean_matrix(results)
    return row


def _comparisons(groups: dict[str, list[ExperimentRun]]) -> tuple[list[dict], list[dict]]:
    """Graft (each policy) against each other method: the final-row scores paired by (skill,
    seed); p from a sign-flip test over those pairs, Holm-adjusted over all the comparisons;
    the interval of the mean difference from the paired bootstrap. Second: the comparisons
    with no (skill, seed) pair, which are not tested."""
    out, untested = [], []
    for g_label, g_runs in groups.items():
        if g_runs[0].method != "graft":
            continue
        for b_label, b_runs in groups.items():
            if b_runs[0].method == "graft":
                continue
            graft = {r.seed: _final_row(r.result) for r in g_runs}
            base = {r.seed: _final_row(r.result) for r in b_runs}
            pairs = [(base[s][k], graft[s][k]) for s in sorted(graft.keys() & base.keys())
                     for k in graft[s] if k in base[s] and None not in (base[s][k], graft[s][k])]
            if not pairs:
                untested.append({"graft": g_label, "baseline": b_label})
                continue
            t = paired_bootstrap([b for b, _ in pairs], [g for _, g in pairs],
                                 iterations=BOOTSTRAP_ITERATIONS, seed=0, confidence=CONFIDENCE)
            p, exact = sign_flip_p([g - b for b, g in pairs])
            out.append({"graft": g_label, "baseline": b_label, "n": t.n,
                        "test": "sign-flip, exact" if exact else
                                f"sign-flip, {SIGN_FLIP_SAMPLES} samples",
                        "seeds": sorted(graft.keys() & base.keys()),
                        "graft_mean": round(t.after, DIGITS),
                        "baseline_mean": round(t.before, DIGITS),
                        "difference": round(t.difference, DIGITS), "low": round(t.low, DIGITS),
                        "high": round(t.high, DIGITS), "p_value": float(f"{p:.3g}")})
    adjusted = holm({f"{c['graft']} vs {c['baseline']}": c["p_value"] for c in out})
    for c in out:
        c["holm_p"] = float(f"{adjusted[c['graft'] + ' vs ' + c['baseline']].adjusted_p:.3g}")
    return out, untested


def _gate_verdicts(groups: dict[str, list[ExperimentRun]]) -> list[dict]:
    """Per graft run, the spec's gate verdict on each of its packs (`graft.stage_verdicts`):
    what a learning job's gate would have decided on the same rows."""
    out = []
    for label, runs in groups.items():
        for run in runs:
            verdicts = (run.result or {}).get("gate")
            if run.method != "graft" or not verdicts:
                continue
            out.append({"graft": label, "seed": run.seed,
                        "promoted": sum(v["verdict"] == "promoted" for v in verdicts),
                        "of": len(verdicts),
                        "verdicts": [{k: v[k] for k in ("skill", "verdict", "summary")}
                                     for v in verdicts]})
    return out


def _no_result_error(experiment: Experiment) -> JobError:
    counts = {}
    for r in experiment.runs:
        counts[JobStatus(r.status).value] = counts.get(JobStatus(r.status).value, 0) + 1
    said = ", ".join(f"{s} {n}" for s, n in sorted(counts.items())) or "no runs"
    if any(not JobStatus(r.status).finished for r in experiment.runs):
        return JobError(f"Experiment {experiment.id} has no finished run yet ({said}); wait for "
                        f"it with `skillstore experiment wait {experiment.id}`, then report.")
    return JobError(f"Experiment {experiment.id} has no run that succeeded ({said}); see each "
                    f"run's error with `skillstore experiment show {experiment.id}`.")


def build_experiment_report(session: Session, experiment: Experiment) -> dict:
    """The report's document: every number rounded to what the formats show."""
    done = [r for r in experiment.runs if r.status == JobStatus.succeeded and r.result]
    if not done:
        raise _no_result_error(experiment)
    groups: dict[str, list[ExperimentRun]] = {}
    for run in done:  # runs are stored in the spec's method order, seeds within each
        groups.setdefault(_group_key(run), []).append(run)
    failed = [{"run_id": r.id, "method": r.method, "seed": r.seed, "error": r.error or ""}
              for r in experiment.runs if r.status == JobStatus.failed]
    excluded = [{"run_id": r.id, "method": r.method, "seed": r.seed,
                 "status": JobStatus(r.status).value}
                for r in experiment.runs if r.status not in (JobStatus.succeeded, JobStatus.failed)
                or (r.status == JobStatus.succeeded and not r.result)]
    base = session.get(BaseCheckpoint, experiment.base_id)
    comparisons, untested = _comparisons(groups)
    return {
        "format_version": FORMAT_VERSION,
        "experiment": {"id": experiment.id, "name": experiment.name,
                       "status": JobStatus(experiment.status).value,
                       "base": base.name if base else None,
                       "spec_sha256": experiment.spec_sha256,
                       "created_at": experiment.created_at.isoformat(),
                       "finished_at": experiment.finished_at and experiment.finished_at.isoformat(),
                       "runs": len(experiment.runs), "runs_reported": len(done)},
        "interval": {"confidence": CONFIDENCE, "kind": "Student t over seeds: mean ± "
                     "t(0.975, n-1) · sd / sqrt(n); none with one seed"},
        "methods": [_method(label, runs) for label, runs in groups.items()],
        "paired_tests": {"pairs": "final-row score of each skill at each seed both methods ran",
                         "p": "two-sided sign-flip (permutation) test of the mean difference",
                         "interval": f"paired bootstrap, {BOOTSTRAP_ITERATIONS} resamples, "
                                     "percentile",
                         "adjustment": "Holm over every comparison",
                         "comparisons": comparisons, "untested": untested},
        "gate": _gate_verdicts(groups),
        "fusion": fusion_table(groups),
        # the queue's cost beyond the runs' method seconds (overhead.orchestration)
        "orchestration": orchestration(experiment.created_at, experiment.finished_at,
                                       [(r.started_at, r.finished_at, r.result)
                                        for r in experiment.runs]),
        "failed": failed,
        "excluded": excluded,
    }


# -- rendering -------------------------------------------------------------------------------

def _num(v, digits: int | None = DIGITS) -> str:
    if v is None:
        return "—"
    return str(v) if digits is None else f"{v:.{digits}f}"


def _cell(agg: dict | None, digits: int | None = DIGITS) -> str:
    """``mean ± half`` over seeds; one seed: the value and n_seeds=1, no interval."""
    if agg is None:
        return "—"
    if agg["half_width"] is None:
        return f"{_num(agg['mean'], digits)} (n_seeds=1)"
    return f"{_num(agg['mean'], digits)} ± {_num(agg['half_width'], digits)}"


def _row_labels(m: dict) -> list[str]:
    rows = len(m["accuracy_matrix"])
    if rows == len(m["skills"]):
        return [f"after {s}" for s in m["skills"]]
    return ["final"] * rows


def _sections(doc: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    """(heading, header, rows) of every table, shared by Markdown and HTML."""
    out = [("Methods (mean ± 95% t-interval over seeds)",
            ["method", "n_seeds", "seeds", *METRICS.values(), "bytes per skill"],
            [[m["label"], str(m["n_seeds"]), ", ".join(map(str, m["seeds"])),
              *(_cell(m[k]) for k in METRICS), _cell(m["bytes_per_skill"], None)]
             for m in doc["methods"]])]
    tests = doc["paired_tests"]
    if tests["comparisons"]:
        out.append((f"Graft against each method on the final row (pairs: {tests['pairs']}; "
                    f"p: {tests['p']}, {tests['adjustment']}; 95% interval: "
                    f"{tests['interval']})",
                    ["graft", "against", "seeds", "n pairs", "graft mean", "other mean",
                     "difference", "95% interval", "test", "p", "Holm p"],
                    [[c["graft"], c["baseline"], ", ".join(map(str, c["seeds"])), str(c["n"]),
                      _num(c["graft_mean"]),
                      _num(c["baseline_mean"]), _num(c["difference"]),
                      f"[{_num(c['low'])}, {_num(c['high'])}]", c["test"], str(c["p_value"]),
                      str(c["holm_p"])] for c in tests["comparisons"]]))
    if tests["untested"]:
        out.append(("Not tested: no seed that both methods finished", ["graft", "against"],
                    [[u["graft"], u["baseline"]] for u in tests["untested"]]))
    if gate := doc.get("gate"):
        out.append(("The spec's gate on each graft pack (each stage's state against the one "
                    "before it, paired on the same prompts; recorded, not acted on)",
                    ["graft", "seed", "promoted", "verdicts"],
                    [[g["graft"], str(g["seed"]), f"{g['promoted']} of {g['of']}",
                      "; ".join(f"{v['skill']}: {v['summary']}" for v in g["verdicts"])]
                     for g in gate]))
    out += fusion_sections(doc.get("fusion") or [])
    if cost := doc.get("orchestration"):
        out.append(("Orchestration (seconds; overhead = time in the tasks beyond the methods' "
                    "own + wall time when no run was running)",
                    ["runs", "method seconds", "wall", "in tasks", "idle", "overhead",
                     "overhead / method seconds"],
                    [[str(cost["runs"]), _num(cost["work_s"], 1), _num(cost["wall_s"], 1),
                      _num(cost["in_task_s"], 1), _num(cost["idle_s"], 1),
                      _num(cost["overhead_s"], 1),
                      f"{100 * cost['ratio']:.2f}%" if cost["ratio"] is not None else "-"]]))
    if doc["failed"]:
        out.append(("Failed runs (not in the figures above)", ["run", "method", "seed", "error"],
                    [[str(f["run_id"]), f["method"], str(f["seed"]), f["error"]]
                     for f in doc["failed"]]))
    if doc["excluded"]:
        out.append(("Runs not finished (excluded from the figures above)",
                    ["run", "method", "seed", "status"],
                    [[str(x["run_id"]), x["method"], str(x["seed"]), x["status"]]
                     for x in doc["excluded"]]))
    return out


def _matrix_section(m: dict) -> tuple[str, list[str], list[list[str]]]:
    return (f"Mean accuracy matrix: {m['label']} (R[i][j], row: after stage i, column: skill j; "
            f"mean over {m['n_seeds']} seed(s))", ["stage", *m["skills"]],
            [[label, *(_num(v, 3) for v in row)]
             for label, row in zip(_row_labels(m), m["accuracy_matrix"], strict=True)])


def _title(doc: dict) -> str:
    e = doc["experiment"]
    return f"Experiment {e['id']}: {e['name']}"


def _summary(doc: dict) -> str:
    e = doc["experiment"]
    return (f"Base {e['base']}, status {e['status']}; {e['runs_reported']} of {e['runs']} runs "
            f"reported (failed and unfinished runs are listed below and left out of every "
            f"figure). Intervals: {doc['interval']['kind']}. Spec {e['spec_sha256']}.")


def _colour(v: float) -> str:
    """0 -> pale, 1 -> dark blue, linearly."""
    lo, hi = (247, 251, 255), (8, 48, 107)
    return "#" + "".join(f"{round(a + (b - a) * v):02x}" for a, b in zip(lo, hi, strict=True))


def heatmap_svg(m: dict) -> str:
    """One method's mean accuracy matrix as an inline SVG heatmap."""
    e, cell, left, top = html.escape, 44, 110, 34
    rows, cols = m["accuracy_matrix"], m["skills"]
    # wide enough for the title (about 8 px a bold character) as well as the cells
    width = max(left + cell * len(cols) + 10, 10 + 8 * len(m["label"]))
    height = top + cell * len(rows) + 70
    parts = [f"<svg width='{width}' height='{height}' role='img'>",
             f"<text x='10' y='18' font-weight='bold'>{e(m['label'])}</text>"]
    for i, (label, row) in enumerate(zip(_row_labels(m), rows, strict=True)):
        y = top + i * cell
        parts.append(f"<text x='{left - 6}' y='{y + cell / 2 + 4}' text-anchor='end' "
                     f"font-size='11'>{e(label)}</text>")
        for j, v in enumerate(row):
            x = left + j * cell
            fill = "#ddd" if v is None else _colour(v)
            ink = "black" if v is None or v < 0.6 else "white"
            parts.append(f"<rect x='{x}' y='{y}' width='{cell}' height='{cell}' fill='{fill}' "
                         f"stroke='white'/><text x='{x + cell / 2}' y='{y + cell / 2 + 4}' "
                         f"text-anchor='middle' font-size='11' fill='{ink}'>{_num(v, 3)}</text>")
    for j, skill in enumerate(cols):
        x, y = left + j * cell + cell / 2, top + len(rows) * cell + 8
        parts.append(f"<text x='{x}' y='{y}' font-size='11' text-anchor='end' "
                     f"transform='rotate(-45 {x} {y})'>{e(skill)}</text>")
    return "".join(parts) + "</svg>"


def _bytes_label(v: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if v >= size:
            return f"{v / size:g} {unit}"
    return f"{v:g} B"


def scatter_svg(methods: list[dict]) -> str:
    """Average accuracy (with its interval) against bytes per skill, one point per method and
    policy; bytes on a log axis."""
    e, w, h, left, bottom = html.escape, 560, 340, 60, 40
    points = [(m["label"], m["bytes_per_skill"]["mean"], m["average_accuracy"])
              for m in methods if m["bytes_per_skill"] and m["average_accuracy"]
              and m["bytes_per_skill"]["mean"] > 0]
    axis = h - bottom
    parts = [f"<svg width='{w}' height='{h}' role='img'>",
             f"<line x1='{left}' y1='{axis}' x2='{w - 10}' y2='{axis}' stroke='black'/>",
             f"<line x1='{left}' y1='10' x2='{left}' y2='{h - bottom}' stroke='black'/>",
             f"<text x='{w / 2}' y='{h - 5}' text-anchor='middle' font-size='12'>bytes per skill "
             "(log scale)</text>", f"<text x='14' y='{h / 2}' font-size='12' text-anchor='middle' "
             f"transform='rotate(-90 14 {h / 2})'>average accuracy</text>"]
    logs = [math.log10(b) for _, b, _ in points] or [0.0]
    x0, x1 = math.floor(min(logs)) - 0.5, math.ceil(max(logs)) + 0.5

    def sx(b: float) -> float:
        return round(left + (math.log10(b) - x0) / (x1 - x0) * (w - left - 20), 1)

    def sy(v: float) -> float:
        return round(10 + (1 - v) * (h - bottom - 10), 1)

    for k in range(math.ceil(x0), math.floor(x1) + 1):
        parts.append(f"<text x='{sx(10 ** k)}' y='{h - bottom + 14}' font-size='10' "
                     f"text-anchor='middle'>{_bytes_label(10 ** k)}</text>")
    for v in (0, 0.25, 0.5, 0.75, 1):
        parts.append(f"<text x='{left - 4}' y='{sy(v) + 4}' font-size='10' "
                     f"text-anchor='end'>{v:g}</text>")
    for label, b, acc in points:
        x = sx(b)
        if acc["half_width"] is not None:
            parts.append(f"<line x1='{x}' y1='{sy(min(1, acc['high']))}' x2='{x}' "
                         f"y2='{sy(max(0, acc['low']))}' stroke='#555'/>")
        parts.append(f"<circle cx='{x}' cy='{sy(acc['mean'])}' r='4' fill='#08306b'/>"
                     f"<text x='{x + 6}' y='{sy(acc['mean']) - 6}' font-size='11'>"
                     f"{e(label)}</text>")
    return "".join(parts) + "</svg>"


class ExperimentReportFormat(Protocol):
    """One way to write the report's document out: a complete document of ``media_type``."""

    @property
    def name(self) -> str: ...

    @property
    def media_type(self) -> str: ...

    def render(self, doc: dict) -> str: ...


class Markdown:
    """A Markdown document: headings and pipe tables."""

    name = "md"
    media_type = "text/markdown; charset=utf-8"

    def render(self, doc: dict) -> str:
        lines = [f"# {_title(doc)}", "", _summary(doc), ""]
        tables = _sections(doc)
        tables[1:1] = [_matrix_section(m) for m in doc["methods"]]
        for heading, header, rows in tables:
            lines += [f"## {heading}", "", "| " + " | ".join(header) + " |",
                      "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows), ""]
        lines += ["The HTML format (`--format html`) draws the matrices as heatmaps and plots "
                  "average accuracy against bytes per skill.", ""]
        return "\n".join(lines)


class Html:
    """One self-contained HTML page: the heatmaps and the plot are inline SVG."""

    name = "html"
    media_type = "text/html; charset=utf-8"

    def render(self, doc: dict) -> str:
        e = html.escape

        def table(heading: str, header: list[str], rows: list[list[str]]) -> str:
            return (f"<h2>{e(heading)}</h2><table><tr>"
                    + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>"
                    + "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>"
                              for r in rows) + "</table>")

        sections = _sections(doc)
        parts = ["<!doctype html>", "<html><head><meta charset='utf-8'>",
                 f"<title>{e(_title(doc))}</title>",
                 "<style>body{font-family:sans-serif;max-width:80em;margin:2em auto}"
                 "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;"
                 "padding:.3em .6em;text-align:right}th{background:#eee}"
                 ".row{display:flex;flex-wrap:wrap;gap:1em}</style>",
                 "</head><body>", f"<h1>{e(_title(doc))}</h1>", f"<p>{e(_summary(doc))}</p>",
                 table(*sections[0]),
                 "<h2>Mean accuracy matrices (R[i][j], row: after stage i, column: skill j; "
                 "mean over the method's seeds)</h2>",
                 "<div class='row'>" + "".join(heatmap_svg(m) for m in doc["methods"]) + "</div>",
                 "<h2>Average accuracy against bytes per skill (bars: 95% t-interval over "
                 "seeds)</h2>", scatter_svg(doc["methods"]),
                 *(table(*s) for s in sections[1:]), "</body></html>"]
        return "\n".join(parts)


class Json:
    """The report's document as it was built."""

    name = "json"
    media_type = "application/json"

    def render(self, doc: dict) -> str:
        return json.dumps(doc, indent=2, sort_keys=True) + "\n"


EXPERIMENT_REPORT_FORMATS: Registry[ExperimentReportFormat] = Registry("experiment report format",
                                               [Markdown(), Html(), Json()])


def render_experiment_report(doc: dict, fmt: str = "md") -> str:
    return EXPERIMENT_REPORT_FORMATS[fmt].render(doc)
