"""The facts of a report from the catalog: accuracy matrix, metrics, decision, deltas, lineage."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import sqlalchemy as sa

from ..catalog.lineage import ancestors, describe_nodes
from ..catalog.models import ModelState, Promotion, SkillPack
from ..catalog.states import get_state
from ..errors import EvaluationError, NotFoundError
from ..evaluation.cache import Suite
from ..evaluation.compare import Comparison
from ..evaluation.metrics import continual_metrics
from ..evaluation.scores import GENERAL_SUITE, Score, suite_scores
from ..states.view import load_view


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


def chain(session, state: ModelState) -> list[ModelState]:
    """The state and its ancestors through ``parent_id``, oldest first."""
    out, seen = [state], {state.id}
    while out[0].parent_id is not None and out[0].parent_id not in seen:
        seen.add(out[0].parent_id)
        out.insert(0, get_state(session, out[0].parent_id))
    return out


@dataclass(frozen=True)
class AccuracyMatrix:
    """R[i][j], the score on skill j after learning stage i, as the eval table holds it.

    Stage i is the i-th state of the chain that holds packs (the last ``len(skills)`` of them,
    ``states``). A cell never measured is None: the gate measures every learned skill and
    R[i][i+1] (the score just before a skill is learned), nothing further above the diagonal.
    """

    skills: list[str]
    states: list[int]
    matrix: list[list[float | None]]
    base: list[float | None]  # the pack-less root's score per skill, None when not measured
    general: list[float | None]  # the general suite's score at each state of the chain, root first

    def metrics(self) -> dict | None:
        """ACC, BWT, forgetting and FWT; None while a required cell is missing."""
        if not self.matrix or len(self.matrix) != len(self.skills):
            return None
        return metrics_of(self.skills, self.matrix, self.base)


def accuracy_matrix(session, state: ModelState, suites: list[Suite] | None = None, *,
                    limit: int | None = None) -> AccuracyMatrix:
    """The accuracy matrix of the learning history that led to ``state`` (its skills, in pack
    order), from the eval table only. Scores are each suite's newest version, or exactly
    ``suites`` at ``limit`` when given (named after the skills and GENERAL_SUITE)."""
    skills = load_view(session, state).skills
    stages = chain(session, state)
    scores = {s.id: suite_scores(session, s.id, suites, limit=limit) for s in stages}

    def score(state_id: int, suite: str) -> float | None:
        sc = scores[state_id].get(suite)
        return None if sc is None else sc.value

    learned = [s for s in stages if s.members][-len(skills):] if skills else []
    root = stages[0] if not stages[0].members else None
    return AccuracyMatrix(
        skills=skills, states=[s.id for s in learned],
        matrix=[[score(s.id, sk) for sk in skills] for s in learned],
        base=[score(root.id, sk) if root else None for sk in skills],
        general=[score(s.id, GENERAL_SUITE) for s in stages])


def metrics_of(skills: list[str], matrix: list[list[float | None]],
               base: list[float | None]) -> dict | None:
    try:
        b = None if any(v is None for v in base) else base
        return continual_metrics(matrix, b).as_dict()
    except EvaluationError:
        return None  # an incomplete matrix shows as a table, without metrics


def _decision_for(session, state: ModelState, pack: SkillPack | None) -> dict | None:
    q = sa.select(Promotion).order_by(Promotion.id.desc())
    q = (q.where(Promotion.pack_id == pack.id) if pack is not None
         else q.where(Promotion.state_id == state.id))
    row = session.scalars(q).first()
    if row is None or row.to_status.value == "candidate":
        return {"verdict": "pending", "reasons": ["not decided yet"], "actor": None}
    # an inconclusive gate decision is stored as rejected with its reason saying so
    verdict = ("inconclusive" if row.to_status.value == "rejected"
               and row.reason.startswith("inconclusive:") else row.to_status.value)
    return {"verdict": verdict, "reasons": row.reason.split("; "), "actor": row.actor,
            "pack_id": row.pack_id, "report_ref": row.report_ref, "at": row.created_at.isoformat()}


def delta_row(suite: str, before: Score, after: Score, confidence: float = 0.95) -> dict:
    """One suite's change with its two-sided interval: paired over prompts when both states
    kept per-sample scores of the same suite version, else unpaired on their stderrs."""
    if before.version != after.version:  # the newest versions differ: no prompt pairs them
        before = replace(before, samples=None, version=None)
        after = replace(after, samples=None, version=None)
    t = Comparison.of(suite, before, after).at((1.0 + confidence) / 2.0)
    return {"suite": suite, "before": before.value, "after": after.value,
            "delta": after.value - before.value, "ci_low": t.low, "ci_high": t.high,
            "n": t.n, "test": t.test, "p_value": t.p_value}


def build_report(session, *, state: ModelState | None = None, pack: SkillPack | None = None,
                 blobs=None, confidence: float = 0.95) -> ReportData:
    """Gather a report on a state, or on a pack (the state its gate decision was made on).
    With the blob store the per-suite deltas are paired over prompts."""
    if pack is not None and state is None:
        state_id = session.scalar(
            sa.select(Promotion.state_id)
            .where(Promotion.pack_id == pack.id, Promotion.state_id.is_not(None))
            .order_by(Promotion.id.desc()))
        if state_id is None:
            raise NotFoundError(f"Pack {pack.id} has not been judged on any state yet; "
                                "run the gate on it or ask for `skillstore report --state`.")
        state = get_state(session, state_id)
    if state is None:
        raise NotFoundError("Name a state or a pack to report on.")
    view = load_view(session, state)
    matrix = accuracy_matrix(session, state)
    after_scores = suite_scores(session, state.id, blobs=blobs)
    parent_scores = (suite_scores(session, state.parent_id, blobs=blobs)
                     if state.parent_id is not None else {})
    deltas = [delta_row(suite, parent_scores[suite], after, confidence)
              for suite, after in sorted(after_scores.items()) if suite in parent_scores]
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
    title = (f"Pack {focus.id} ({view.members[-1].skill}@v{view.members[-1].version})" if pack
             else f"State {state.id}")
    return ReportData(
        title=title,
        state={"id": state.id, "fingerprint": state.fingerprint, "base": view.base_name,
               "router": view.router, "parent_id": state.parent_id},
        skills=matrix.skills, accuracy_matrix=matrix.matrix, base_scores=matrix.base,
        general=matrix.general, metrics=matrix.metrics(),
        decision=_decision_for(session, state, pack), deltas=deltas, packs=packs, lineage=lineage,
        baselines=baselines)
