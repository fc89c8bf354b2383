"""Report formats (a registry): Markdown, self-contained HTML with an embedded heatmap, JSON."""

from __future__ import annotations

import base64
import html
import io
import json
from typing import Protocol, runtime_checkable

from ..registry import Registry
from .data import ReportData


@runtime_checkable
class ReportFormat(Protocol):
    """One way to write a ReportData out: a complete document of ``media_type`` as text."""

    @property
    def name(self) -> str: ...

    @property
    def media_type(self) -> str: ...

    def render(self, data: ReportData) -> str: ...


def _f(v: float | None, digits: int = 3) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def pyplot():
    """matplotlib's pyplot on the Agg backend (no display); the first call imports it, which
    takes most of a second, so a server calls this once at startup (`ui.app.create_ui`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def heatmap_png(data: ReportData) -> bytes:
    """The accuracy matrix (and each baseline's) as heatmaps side by side, PNG bytes."""
    import numpy as np

    plt = pyplot()

    panels = [("this state", _column_names(data), data.accuracy_matrix)] + [
        (name, b["skills"], b["accuracy_matrix"]) for name, b in data.baselines.items()]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), squeeze=False)
    for ax, (name, skills, matrix) in zip(axes[0], panels, strict=True):
        grid = np.array([[np.nan if v is None else v for v in row] for row in matrix] or [[np.nan]],
                        dtype=float)
        ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="viridis")
        ax.set_title(name)
        ax.set_xticks(range(len(skills)), skills, rotation=45, ha="right")
        ax.set_yticks(range(len(matrix)), [f"after {s}" for s in skills[:len(matrix)]])
        for (i, j), v in np.ndenumerate(grid):
            if not np.isnan(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center",
                        color="white" if v < 0.6 else "black", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def _column_names(data: ReportData) -> list[str]:
    """Each skill, with the gate's verdict when the state does not hold its pack."""
    verdicts = {c["skill"]: c for c in data.columns}
    return [sk if verdicts.get(sk, {}).get("held", True) else f"{sk} ({verdicts[sk]['verdict']})"
            for sk in data.skills]


def _matrix_rows(skills: list[str], matrix: list[list[float | None]]) -> list[list[str]]:
    return [[f"after {skills[i]}", *(_f(v) for v in row)] for i, row in enumerate(matrix)]


FIDELITY_KEYS = ("ratio", "pack", "finetune", "low", "n", "status")


def _fidelity(doc: dict | None) -> str:
    """A pack's fidelity as stored (known keys first, in order; the rest after); — when none."""
    if not doc:
        return "—"
    parts = []
    for k in [*(k for k in FIDELITY_KEYS if k in doc), *sorted(set(doc) - set(FIDELITY_KEYS))]:
        v = doc[k]
        parts.append(f"{k} {_f(v) if isinstance(v, float) else v}")
    return ", ".join(parts)


def _num(v, fmt: str) -> str:
    return "—" if v is None else format(v, fmt)


def _check_row(c: dict) -> list[str]:
    """One gate check; a key the check does not carry shows as —."""
    interval = ("—" if c.get("low") is None or c.get("high") is None
                else f"[{c['low']:+.3f}, {c['high']:+.3f}]")
    return [str(c.get("suite", "")), str(c.get("kind", "")), _num(c.get("estimate"), "+.3f"),
            interval, _num(c.get("confidence"), ".4g"), _num(c.get("threshold"), "+.3f"),
            str(c.get("test", "")), _num(c.get("p_value"), ".2g"), str(c.get("n", "—")),
            str(c.get("status", "")) + (f" (needs n ≈ {c['needed_n']})" if c.get("needed_n")
                                        else "")]


def _sections(data: ReportData) -> list[tuple[str, list[str], list[list[str]]]]:
    """(heading, header, rows) of every table, shared by Markdown and HTML."""
    m = data.metrics or {}
    out = [("Accuracy matrix R[i][j] (row: after learning stage i; column: skill j; a skill the "
            "state does not hold shows its verdict, and its row is the state that stayed)",
            ["stage", *_column_names(data)], _matrix_rows(data.skills, data.accuracy_matrix)
            + [["base (no packs)", *(_f(v) for v in data.base_scores)]]),
           ("Continual-learning metrics (ACC over every attempted skill; BWT, forgetting and FWT "
            "over the learned ones)",
            ["run", "average accuracy", "ACC over learned", "BWT", "forgetting", "FWT",
             "scored by"],
            [["this state", _f(m.get("average_accuracy")), _f(m.get("learned_average_accuracy")),
              _f(m.get("bwt")), _f(m.get("forgetting")), _f(m.get("forward_transfer")),
              "lm-eval (eval table)"]]
            + [[name, _f(b.get("average_accuracy")), _f(b.get("learned_average_accuracy")),
                _f(b.get("bwt")), _f(b.get("forgetting")), "—",
                str(b.get("scorer", "unknown"))
                + ("" if b.get("same_skills", True) else " (other skills)")]
               for name, b in data.baselines.items()])]
    if data.columns:
        out.append(("Skills attempted", ["skill", "pack", "held by this state", "verdict",
                                         "fidelity"],
                    [[c["skill"], f"#{c['pack_id']}", "yes" if c["held"] else "no", c["verdict"],
                      _fidelity(c.get("fidelity"))] for c in data.columns]))
    for name, b in data.baselines.items():
        out.append((f"Baseline: {name} (R[i][j])", ["stage", *b["skills"]],
                    _matrix_rows(b["skills"], b["accuracy_matrix"])))
    checks = (data.decision or {}).get("checks") or []
    if checks:
        out.append(("Gate checks (each end of the interval a one-sided bound at its level)",
                    ["suite", "claim", "estimate", "interval", "level", "threshold", "test",
                     "p", "n", "status"], [_check_row(c) for c in checks]))
    if data.deltas:
        out.append(("Per-suite change against the parent state (95% interval)",
                    ["suite", "before", "after", "delta", "interval", "test", "p", "n"],
                    [[d["suite"], _f(d["before"]), _f(d["after"]), f"{d['delta']:+.3f}",
                      f"[{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]", d.get("test", ""),
                      f"{d['p_value']:.2g}" if d.get("p_value") is not None else "—",
                      str(d["n"])]
                     for d in data.deltas]))
    if data.packs:
        out.append(("Packs", ["position", "pack", "scale", "bytes", "ratio", "codecs", "status",
                              "fidelity"],
                    [[str(i), f"{p['skill']}@v{p['version']} (#{p['pack_id']})", f"{p['scale']:g}",
                      str(p["size_bytes"]), _f(p["compression_ratio"], 1),
                      ", ".join(f"{k}: {v}" for k, v in sorted(p["codecs"].items())), p["status"],
                      _fidelity(p.get("fidelity"))]
                     for i, p in enumerate(data.packs)]))
    if data.router:
        out += _router_sections(data.router)
    if data.lineage:
        out.append(("Lineage (child -> parent)", ["child", "parent", "kind"],
                    [[e["child"], e["parent"], e["kind"]] for e in data.lineage["edges"]]))
    return out


def _router_sections(r: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    """The learned router's accuracy per class and its confusion matrix on held-out prompts."""
    interval = r.get("interval")
    threshold = r.get("threshold")
    summary = (f"Learned router on the {r.get('prompts', 'held-out prompts')}: accuracy "
               f"{_f(r.get('accuracy'))}"
               + (f" [{interval[0]:.3f}, {interval[1]:.3f}] (95% Wilson)" if interval else "")
               + f", n {r.get('n', '—')}; "
               + ("never abstains on confidence" if threshold is None
                  else f"abstains (no pack) below top probability {threshold:.3f}")
               + ("; and on inputs unlike their top skill (similarity below "
                  + ", ".join(f"{c} {b:.2f}" for c, b in r["familiarity"].items()) + ")"
                  if r.get("familiarity") else ""))
    per_class = [[c, _f(v["accuracy"]), str(v["n"])] for c, v in r.get("per_class", {}).items()]
    confusion = r.get("confusion", {})
    predicted = list(dict.fromkeys(p for row in confusion.values() for p in row))
    return [(summary, ["class", "accuracy", "n"], per_class),
            ("Router confusion matrix (row: true class; column: routed to)",
             ["true class", *predicted],
             [[t, *(str(row.get(p, 0)) for p in predicted)] for t, row in confusion.items()])]


def _decision_lines(data: ReportData) -> list[str]:
    d = data.decision or {"verdict": "pending", "reasons": []}
    return [f"**Decision: {d['verdict']}**"] + [f"- {r}" for r in d["reasons"]]


class Markdown:
    """A Markdown document: headings and pipe tables."""

    name = "md"
    media_type = "text/markdown; charset=utf-8"

    def render(self, data: ReportData) -> str:
        lines = [f"# {data.title}", "",
                 f"State {data.state['id']} on base {data.state['base']!r}, "
                 f"router `{data.state['router']}`, "
                 f"fingerprint `{data.state['fingerprint']}`.", "", *_decision_lines(data), ""]
        for heading, header, rows in _sections(data):
            lines += [f"## {heading}", "", "| " + " | ".join(header) + " |",
                      "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows), ""]
        return "\n".join(lines)


class Html:
    """One self-contained HTML page, the heatmap embedded as a data URI."""

    name = "html"
    media_type = "text/html; charset=utf-8"

    def render(self, data: ReportData) -> str:
        e = html.escape
        png = base64.b64encode(heatmap_png(data)).decode()
        parts = ["<!doctype html>", "<html><head><meta charset='utf-8'>",
                 f"<title>{e(data.title)}</title>",
                 "<style>body{font-family:sans-serif;max-width:70em;margin:2em auto}"
                 "table{border-collapse:collapse;margin:1em 0}"
                 "td,th{border:1px solid #bbb;padding:.3em .6em;"
                 "text-align:right}th{background:#eee}.promoted{color:#060}.rejected{color:#a00}"
                 ".inconclusive{color:#a60}</style>",
                 "</head><body>", f"<h1>{e(data.title)}</h1>",
                 f"<p>State {data.state['id']} on base <b>{e(str(data.state['base']))}</b>, router "
                 f"<code>{e(data.state['router'])}</code>, fingerprint "
                 f"<code>{e(data.state['fingerprint'])}</code>.</p>"]
        d = data.decision or {"verdict": "pending", "reasons": []}
        parts.append(f"<h2 class='{e(d['verdict'])}'>Decision: {e(d['verdict'])}</h2><ul>"
                     + "".join(f"<li>{e(r)}</li>" for r in d["reasons"]) + "</ul>")
        parts.append(f"<img alt='accuracy matrix heatmap' src='data:image/png;base64,{png}'>")
        for heading, header, rows in _sections(data):
            parts.append(f"<h2>{e(heading)}</h2><table><tr>"
                         + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>"
                         + "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>"
                                   for r in rows) + "</table>")
        parts.append("</body></html>")
        return "\n".join(parts)


class Json:
    """The report's facts as one JSON object (``ReportData.as_json``)."""

    name = "json"
    media_type = "application/json"

    def render(self, data: ReportData) -> str:
        return json.dumps(data.as_json(), indent=2, sort_keys=True) + "\n"


REPORT_FORMATS: Registry[ReportFormat] = Registry("report format", [Markdown(), Html(), Json()])


def render_report(data: ReportData, fmt: str = "md") -> str:
    return REPORT_FORMATS[fmt].render(data)
