"""The facts of a report, gathered from the catalog: accuracy matrix, metrics, decision, deltas, lineage."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import sqlalchemy as sa

from ..catalog.lineage import ancestors, describe_nodes
from ..catalog.models import EvalResult, ModelState, Promotion, SkillPack
from ..catalog.states import get_state
from ..errors import EvaluationError, NotFoundError
from ..evaluation.metrics import continual_metrics
from ..gate.decision import GENERAL, Score
from ..states.view import load_view

HEADLINE_METRICS = ("exact_match", "acc")


@dataclass
class ReportData:
    """Everything a report shows; ``as_json`` is the JSON format's document."""

    title: str
    state: dict
    skills: list[str]
    accuracy_matrix: list[list[float | None]]
    base_scores: list[float | None]
    general: list[float | None]  # general-suite score per stage
    metrics: dict | None
    decision: dict | None
    deltas: list[dict] = field(default_factory=list)
    packs: list[dict] = field(default_factory=list)
    lineage: dict | None = None
    baselines: dict[str, dict] = field(default_factory=dict)

    def as_json(self) -> dict:
        m = self.metrics or {}
        return {"title": self.title, "state": self.state, "skills": self.skills,
                "accuracy_matrix": self.accuracy_matrix, "base_scores": self.base_scores,
                "general": self.general, "bwt": m.get("bwt"), "forgetting": m.get("forgetting"),
                "average_accuracy": m.get("average_accuracy"),
                "forward_transfer": m.get("forward_transfer"), "decision": self.decision,
                "deltas": self.deltas, "packs": self.packs, "lineage": self.lineage,
                "baselines": self.baselines}


def suite_scores(session, state_id: int) -> dict[str, Score]:
    """Headline score per suite of a state: mean over tasks of the first headline metric found,
    stderr pooled as sqrt(sum se^2)/k; the newest suite version wins."""
    rows = list(session.scalars(sa.select(EvalResult).where(EvalResult.state_id == state_id)
                                .order_by(EvalResult.id)))
    newest = {}
    for r in rows:
        newest[r.suite] = r.suite_version
    out = {}
    for suite, version in newest.items():
        mine = [r for r in rows if r.suite == suite and r.suite_version == version]
        metric = next((m for m in HEADLINE_METRICS if any(r.metric == m for r in mine)), mine[0].metric)
        picked = [r for r in mine if r.metric == metric]
        k = len(picked)
        out[suite] = Score(sum(r.value for r in picked) / k,
                           math.sqrt(sum((r.stderr or 0.0) ** 2 for r in picked)) / k,
                           sum(r.n for r in picked))
    return out


def chain(session, state: ModelState) -> list[ModelState]:
    """The state and its ancestors through ``parent_id``, oldest first."""
    out, seen = [state], {state.id}
    while out[0].parent_id is not None and out[0].parent_id not in seen:
        seen.add(out[0].parent_id)
        out.insert(0, get_state(session, out[0].parent_id))
    return out


def metrics_of(skills: list[str], matrix: list[list[float | None]], base: list[float | None]) -> dict | None:
    try:
        b = None if any(v is None for v in base) else base
        return continual_metrics(matrix, b).as_dict()
    except EvaluationError:
        return None  # an incomplete matrix shows as a table, without metrics


def _decision_for(session, state: ModelState, pack: SkillPack | None) -> dict | None:
    q = sa.select(Promotion).order_by(Promotion.id.desc())
    q = q.where(Promotion.pack_id == pack.id) if pack is not None else q.where(Promotion.state_id == state.id)
    row = session.scalars(q).first()
    if row is None or row.to_status.value == "candidate":
        return {"verdict": "pending", "reasons": ["not decided yet"], "actor": None}
    return {"verdict": row.to_status.value, "reasons": row.reason.split("; "), "actor": row.actor,
            "pack_id": row.pack_id, "report_ref": row.report_ref, "at": row.created_at.isoformat()}


def build_report(session, *, state: ModelState | None = None, pack: SkillPack | None = None,
                 z: float = 1.96) -> ReportData:
    """Gather a report on a state, or on a pack (the state its gate decision was made on)."""
    if pack is not None and state is None:
        state_id = session.scalar(sa.select(Promotion.state_id).where(
            Promotion.pack_id == pack.id, Promotion.state_id.is_not(None)).order_by(Promotion.id.desc()))
        if state_id is None:
            raise NotFoundError(f"Pack {pack.id} has not been judged on any state yet; "
                                "run the gate on it or ask for `skillstore report --state`.")
        state = get_state(session, state_id)
    if state is None:
        raise NotFoundError("Name a state or a pack to report on.")
    view = load_view(session, state)
    stages = chain(session, state)
    scores = {s.id: suite_scores(session, s.id) for s in stages}
    root = stages[0] if not stages[0].members else None
    learned = [s for s in stages if s.members]
    skills = view.skills

    def score(state_id: int, suite: str) -> float | None:
        sc = scores[state_id].get(suite)
        return None if sc is None else sc.value

    matrix = [[score(s.id, sk) for sk in skills] for s in learned[-len(skills):]] if skills else []
    base = [score(root.id, sk) if root else None for sk in skills]
    general = [score(s.id, GENERAL) for s in stages]
    parent_scores = scores[stages[-2].id] if len(stages) > 1 else {}
    deltas = []
    for suite, after in sorted(scores[state.id].items()):
        before = parent_scores.get(suite)
        if before is None:
            continue
        half = z * math.sqrt(before.stderr ** 2 + after.stderr ** 2)
        d = after.value - before.value
        deltas.append({"suite": suite, "before": before.value, "after": after.value, "delta": d,
                       "ci_low": d - half, "ci_high": d + half, "n": after.n})
    pack_rows = {p.id: p for p in session.scalars(sa.select(SkillPack).where(
        SkillPack.id.in_([m.pack_id for m in view.members])))}
    packs = [dict(asdict(m), method=pack_rows[m.pack_id].method,
                  status=pack_rows[m.pack_id].status.value) for m in view.members]
    focus = pack or (pack_rows[view.members[-1].pack_id] if view.members else None)
    lineage = describe_nodes(session, ancestors(session, focus.id)).to_json() if focus else None
    baselines = {}
    for name, b in ((focus.metrics or {}).get("baselines", {}) if focus else {}).items():
        baselines[name] = {"skills": b["skills"], "accuracy_matrix": b["accuracy_matrix"],
                           **(metrics_of(b["skills"], b["accuracy_matrix"], [None]) or {})}
    title = f"Pack {focus.id} ({view.members[-1].skill}@v{view.members[-1].version})" if pack else f"State {state.id}"
    return ReportData(
        title=title,
        state={"id": state.id, "fingerprint": state.fingerprint, "base": view.base_name,
               "router": view.router, "parent_id": state.parent_id},
        skills=skills, accuracy_matrix=matrix, base_scores=base, general=general,
        metrics=metrics_of(skills, matrix, base) if matrix and len(matrix) == len(skills) else None,
        decision=_decision_for(session, state, pack), deltas=deltas, packs=packs, lineage=lineage,
        baselines=baselines)
