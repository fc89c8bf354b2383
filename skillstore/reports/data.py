"""The facts of a report from the catalog: accuracy matrix, metrics, decision, deltas, lineage."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass, field, replace

import sqlalchemy as sa
from sqlalchemy.orm import aliased

from ..catalog.lineage import ancestors, describe_nodes
from ..catalog.models import Job, JobStep, ModelState, Promotion, Skill, SkillPack
from ..catalog.schema import PackStatus
from ..catalog.states import get_state
from ..errors import EvaluationError, NotFoundError
from ..evaluation.cache import Suite
from ..evaluation.compare import Comparison
from ..evaluation.metrics import continual_metrics
from ..evaluation.scores import GENERAL_SUITE, Score, subset, suite_scores
from ..evaluation.stats import wilson_interval
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
    # one per skill (matrix column): whether the state holds its pack, the gate's verdict on
    # that pack, the state its row measures, and the pack's fidelity when it was measured
    columns: list[dict] = field(default_factory=list)
    # the learned router's evaluation on held-out prompts (router_config["evaluation"]), and
    # its abstention threshold; None for a state without one
    router: dict | None = None

    def as_json(self) -> dict:
        m = self.metrics or {}
        return {"title": self.title, "state": self.state, "skills": self.skills,
                "accuracy_matrix": self.accuracy_matrix, "base_scores": self.base_scores,
                "general": self.general, "bwt": m.get("bwt"), "forgetting": m.get("forgetting"),
                "average_accuracy": m.get("average_accuracy"),
                "learned_average_accuracy": m.get("learned_average_accuracy"),
                "forward_transfer": m.get("forward_transfer"), "decision": self.decision,
                "deltas": self.deltas, "packs": self.packs, "lineage": self.lineage,
                "baselines": self.baselines, "columns": self.columns, "router": self.router}


def chain(session, state: ModelState) -> list[ModelState]:
    """The state and its ancestors through ``parent_id``, oldest first."""
    out, seen = [state], {state.id}
    while out[0].parent_id is not None and out[0].parent_id not in seen:
        seen.add(out[0].parent_id)
        out.insert(0, get_state(session, out[0].parent_id))
    return out


def verdict_of(row: Promotion | None) -> str:
    """promoted, rejected, inconclusive (stored as rejected, its reason saying so), retired or
    pending (not decided yet)."""
    if row is None or row.to_status == PackStatus.candidate:
        return "pending"
    if row.to_status == PackStatus.rejected and row.reason.startswith("inconclusive:"):
        return "inconclusive"
    return row.to_status.value


def _last_promotion(session, pack_id: int) -> Promotion | None:
    return session.scalars(sa.select(Promotion).where(Promotion.pack_id == pack_id)
                           .order_by(Promotion.id.desc())).first()


@dataclass(frozen=True)
class Attempt:
    """One skill attempted in a state's history (a matrix column, and the row after it).

    ``state_id`` is the state after the attempt: the one that added the pack when the state
    holds it (``held``), else the state that stayed, the one the gate evaluated the rejected
    (or inconclusive) pack against. ``verdict`` is the gate's on ``pack_id``.
    """

    skill: str
    state_id: int
    held: bool
    verdict: str
    pack_id: int


def attempts(session, state: ModelState) -> list[Attempt]:
    """Every skill attempted on the way to ``state``, in order: the skills it holds (one per
    stage of its chain that holds packs) and the skills whose packs the gate rejected or found
    inconclusive against a state of that chain, each after the state it was judged on. A skill
    the state holds is listed once, as held; one rejected several times, at its last attempt."""
    view = load_view(session, state)
    stages = chain(session, state)
    index = {s.id: i for i, s in enumerate(stages)}
    learned = [s for s in stages if s.members][-len(view.skills):] if view.skills else []
    # packs that joined together (a state composed or fused in one step) share its stage
    learned = learned[:1] * (len(view.members) - len(learned)) + learned
    events = [((index[st.id], 0, 0),
               Attempt(m.skill, st.id, True, verdict_of(_last_promotion(session, m.pack_id)),
                       m.pack_id))
              for st, m in zip(learned, view.members, strict=True)]
    candidate = aliased(ModelState)
    rows = session.execute(
        sa.select(Promotion, Skill.name, candidate.parent_id)
        .join(SkillPack, SkillPack.id == Promotion.pack_id)
        .join(Skill, Skill.id == SkillPack.skill_id)
        .join(candidate, candidate.id == Promotion.state_id)
        .where(SkillPack.base_id == state.base_id, SkillPack.status == PackStatus.rejected,
               Promotion.to_status == PackStatus.rejected, candidate.parent_id.in_(list(index)))
        .order_by(Promotion.id))
    rejected = {}
    for promo, skill, parent in rows:
        if skill not in view.skills:
            rejected[skill] = ((index[parent], 1, promo.id),
                               Attempt(skill, parent, False, verdict_of(promo), promo.pack_id))
    return [a for _, a in sorted(events + list(rejected.values()), key=lambda e: e[0])]


@dataclass(frozen=True)
class AccuracyMatrix:
    """R[i][j], the score on skill j after learning stage i, as the eval table holds it.

    The columns are every skill attempted on the way to the state (``attempts``), held or not;
    row i is the state after attempt i (``states``; a rejected attempt's row is the state that
    stayed, so it repeats the row before it). A cell never measured is None: the gate measures
    the current state and the candidate on every skill the candidate holds, so a rejected
    skill's column holds the score of the state it was judged against, and later states' scores
    on it only where something else measured them (the demo measures every cell).
    """

    skills: list[str]
    states: list[int]
    matrix: list[list[float | None]]
    base: list[float | None]  # the pack-less root's score per skill, None when not measured
    general: list[float | None]  # the general suite's score at each state of the chain, root first
    held: list[bool] = field(default_factory=list)  # per skill: the state holds its pack
    verdicts: list[str] = field(default_factory=list)  # per skill: the gate's verdict
    pack_ids: list[int] = field(default_factory=list)

    def metrics(self) -> dict | None:
        """ACC over every attempted skill (None while the final state's score on one is
        missing), ACC over the held ones, and BWT, forgetting and FWT over the held ones (see
        evaluation.metrics.continual_metrics); None for an empty matrix."""
        if not self.matrix:
            return None
        return metrics_of(self.skills, self.matrix, self.base, learned=self.held)


def accuracy_matrix(session, state: ModelState, suites: list[Suite] | None = None, *,
                    limit: int | None = None, only: Mapping[str, Collection[str]] | None = None,
                    blobs=None) -> AccuracyMatrix:
    """The accuracy matrix of the learning history that led to ``state`` (every skill attempted,
    see ``attempts``), from the eval table only. Scores are each suite's newest version, or
    exactly ``suites`` at ``limit`` when given (named after the skills and GENERAL_SUITE).

    ``only`` maps a suite to the doc ids its cells are scored on (the prompts of held-out
    templates, say), from the per-prompt scores in ``blobs``; other suites' cells are empty."""
    history = attempts(session, state)
    stages = chain(session, state)
    ids = {s.id for s in stages} | {a.state_id for a in history}
    scores = {i: suite_scores(session, i, suites, limit=limit, blobs=blobs) for i in ids}

    def score(state_id: int, suite: str) -> float | None:
        sc = scores[state_id].get(suite)
        if sc is not None and only is not None:
            sc = subset(sc, only.get(suite, ()))
        return None if sc is None else sc.value

    skills = [a.skill for a in history]
    root = stages[0] if not stages[0].members else None
    return AccuracyMatrix(
        skills=skills, states=[a.state_id for a in history],
        matrix=[[score(a.state_id, sk) for sk in skills] for a in history],
        base=[score(root.id, sk) if root else None for sk in skills],
        general=[score(s.id, GENERAL_SUITE) for s in stages],
        held=[a.held for a in history], verdicts=[a.verdict for a in history],
        pack_ids=[a.pack_id for a in history])


def metrics_of(skills: list[str], matrix: list[list[float | None]],
               base: list[float | None], *, learned: list[bool] | None = None) -> dict | None:
    """The continual-learning metrics of a matrix (every skill learned unless ``learned`` says
    otherwise); None when a cell they need is missing."""
    try:
        if len(base) != len(matrix) or (learned is None and any(v is None for v in base)):
            base = None  # without the base on every skill there is no FWT
        return continual_metrics(matrix, base, learned=learned).as_dict()
    except EvaluationError:
        return None  # an incomplete matrix shows as a table, without metrics


def _recorded_decision(session, pack: SkillPack) -> dict | None:
    """The decision the job that made ``pack`` recorded in its gate step, when it kept one (a
    Decision.as_dict() under "decision", or its "checks" beside the verdict)."""
    out = session.scalars(
        sa.select(JobStep.output).join(Job, Job.id == JobStep.job_id)
        .where(Job.pack_id == pack.id, JobStep.stage == "gate")
        .order_by(JobStep.id.desc())).first() or {}
    decision = out.get("decision")
    if isinstance(decision, dict) and decision.get("checks"):
        return decision
    return {"checks": out["checks"]} if out.get("checks") else None


def _decision_for(session, state: ModelState, pack: SkillPack | None) -> dict | None:
    q = sa.select(Promotion).order_by(Promotion.id.desc())
    q = (q.where(Promotion.pack_id == pack.id) if pack is not None
         else q.where(Promotion.state_id == state.id))
    row = session.scalars(q).first()
    if row is None or row.to_status.value == "candidate":
        return {"verdict": "pending", "reasons": ["not decided yet"], "actor": None}
    out = {"verdict": verdict_of(row), "reasons": row.reason.split("; "), "actor": row.actor,
           "pack_id": row.pack_id, "report_ref": row.report_ref,
           "at": row.created_at.isoformat()}
    recorded = _recorded_decision(session, session.get(SkillPack, row.pack_id))
    if recorded is not None:  # the checks with their intervals, as the gate decided them
        out.update({k: v for k, v in recorded.items() if k in ("checks", "needed_n", "notes")})
    return out


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
        SkillPack.id.in_([m.pack_id for m in view.members] + matrix.pack_ids)))}
    packs = [dict(asdict(m), method=pack_rows[m.pack_id].method,
                  status=pack_rows[m.pack_id].status.value,
                  fidelity=(pack_rows[m.pack_id].metrics or {}).get("fidelity"))
             for m in view.members]
    columns = [{"skill": sk, "held": held, "verdict": verdict, "pack_id": pid,
                "state_id": sid, "fidelity": (pack_rows[pid].metrics or {}).get("fidelity")}
               for sk, held, verdict, pid, sid in zip(matrix.skills, matrix.held,
                                                      matrix.verdicts, matrix.pack_ids,
                                                      matrix.states, strict=True)]
    focus = pack or (pack_rows[view.members[-1].pack_id] if view.members else None)
    lineage = describe_nodes(session, ancestors(session, focus.id)).to_json() if focus else None
    # The focus pack's baselines first, then any other pack of this history's (a run such as
    # the demo stores its baselines on every pack it made).
    others = [pack_rows[i] for i in reversed(matrix.pack_ids) if focus is None or i != focus.id]
    baselines = {}
    for p in ([focus] if focus else []) + others:
        for name, b in (p.metrics or {}).get("baselines", {}).items():
            baselines.setdefault(name, baseline_row(b, matrix.skills))
    title = (f"Pack {focus.id} ({view.members[-1].skill}@v{view.members[-1].version})" if pack
             else f"State {state.id}")
    return ReportData(
        title=title,
        state={"id": state.id, "fingerprint": state.fingerprint, "base": view.base_name,
               "router": view.router, "parent_id": state.parent_id},
        skills=matrix.skills, accuracy_matrix=matrix.matrix, base_scores=matrix.base,
        general=matrix.general, metrics=matrix.metrics(),
        decision=_decision_for(session, state, pack), deltas=deltas, packs=packs, lineage=lineage,
        baselines=baselines, columns=columns, router=router_facts(state.router_config))


def router_facts(config: dict | None) -> dict | None:
    """The stored evaluation of a state's learned router with its threshold and the 95% Wilson
    interval of its accuracy; None without one."""
    evaluation = (config or {}).get("evaluation")
    if not evaluation:
        return None
    n, right = evaluation.get("n") or 0, evaluation.get("right")
    interval = wilson_interval(right, n) if n and right is not None else None
    return {**evaluation, "threshold": config.get("threshold"),
            "familiarity": config.get("familiarity"),
            "interval": [interval.low, interval.high] if interval else None}


def baseline_row(doc: dict, skills: list[str]) -> dict:
    """A stored baseline (``skills``, ``accuracy_matrix``, and how it was scored) with its
    metrics, every skill learned; ``same_skills`` says whether its columns are the report's."""
    kept = {k: v for k, v in doc.items() if k != "metrics"}  # recomputed below, never trusted
    return {**kept, "skills": doc["skills"], "accuracy_matrix": doc["accuracy_matrix"],
            **(metrics_of(doc["skills"], doc["accuracy_matrix"], []) or {}),
            "same_skills": list(doc["skills"]) == list(skills)}
