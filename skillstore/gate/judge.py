"""The gate's verdict: evaluate a candidate, decide on the recorded scores, record the verdict.

The judge has two halves: evaluate a candidate against the current state (cached), then
decide on those recorded scores and store the report. `gate_pack` records what the judge
decided (pack status, audit row, head move) with the head compare-and-swap.

The learning pipeline runs the halves on different queues (evaluate needs the model, the gate
must not load one); :func:`make_judge` runs both in one call for code that holds a model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from sqlalchemy.exc import IntegrityError

from ..catalog.models import BaseCheckpoint, ModelState, Promotion, SkillPack
from ..catalog.packs import set_pack_status
from ..catalog.schema import PackStatus
from ..catalog.states import advance_head, current_head, get_state
from ..errors import EvaluationError, PromotionConflictError, StaleEvaluationError
from ..evaluation.cache import Suite, evaluate_state, missing_tasks
from ..evaluation.loader import state_loader
from ..evaluation.reuse import OutcomeReuse, ReuseRecord
from ..evaluation.scores import Score, suite_scores, with_samples
from ..evaluation.suites import state_suites, suite_prompts
from ..reports import build_report, render_report
from ..states.service import ROUTER_PROMPTS, candidate_state
from ..states.view import base_state, load_view
from .decision import Decision, decide
from .policy import GatePolicy


def head_of(session, base: BaseCheckpoint, *, lock: bool = False) -> tuple[ModelState, int | None]:
    """(current state, head version); a base that never promoted anything is its plain state."""
    head = current_head(session, base.id, lock=lock)
    if head is None:
        return base_state(session, base), None
    return get_state(session, head.state_id), head.version


def record_decision(session, pack: SkillPack, decision: Decision, *, candidate: ModelState,
                    expected_version: int | None, report_ref: str | None = None,
                    actor: str = "gate") -> Promotion:
    """Promote (pack promoted, head -> candidate) or reject (pack rejected), plus the audit row.
    An inconclusive decision is recorded as rejected, its reason starting "inconclusive: needs
    n ≈ N" (PackStatus is a CHECK-constrained column: a new status would need a migration).

    Runs in the caller's transaction. The head row is locked first (SELECT ... FOR UPDATE on
    PostgreSQL; SQLite serialises writers itself) and its version compared with the one the
    decision was made against, so a promotion decided on a stale state raises
    PromotionConflictError instead of overwriting the winner.
    """
    head = current_head(session, pack.base_id, lock=True)
    seen = head.version if head is not None else None
    if decision.promote and seen != expected_version:
        raise PromotionConflictError(
            f"Base {pack.base_id} moved to head version {seen} while pack {pack.id} was judged "
            f"against version {expected_version}; re-evaluate against the new state and retry.")
    if not decision.promote:
        return _set_status(session, pack, PackStatus.rejected, decision.summary(), actor,
                           report_ref, candidate.id)
    audit = _set_status(session, pack, PackStatus.promoted, decision.summary(), actor,
                        report_ref, candidate.id)
    advance_head(session, pack.base_id, candidate.id, expected_version=expected_version)
    return audit


def _set_status(session, pack, to, reason, actor, report_ref, state_id) -> Promotion:
    return set_pack_status(session, pack, to, reason=reason, actor=actor, report_ref=report_ref,
                           state_id=state_id)


@dataclass(frozen=True)
class GateOutcome:
    promotion_id: int
    decision: Decision
    state_id: int
    attempts: int


# judge(session, current, version) -> (candidate state, decision, report_ref); it may evaluate.
Judge = Callable[..., tuple[ModelState, Decision, str | None]]


def gate_pack(session, pack: SkillPack, judge: Judge, *, attempts: int = 5,
              actor: str = "gate") -> GateOutcome:
    """Judge a pack against the current state of its base and record the verdict, retrying
    from a fresh read when another promotion wins the race. Owns the session's transactions:
    commits on success and rolls back each lost attempt."""
    base = session.get(BaseCheckpoint, pack.base_id)
    for attempt in range(1, attempts + 1):
        current, version = head_of(session, base)
        candidate, decision, report_ref = judge(session, current, version)
        try:
            audit = record_decision(session, pack, decision, candidate=candidate,
                                    expected_version=version, report_ref=report_ref, actor=actor)
            session.commit()
            return GateOutcome(audit.id, decision, candidate.id, attempt)
        except (PromotionConflictError, IntegrityError):  # IntegrityError: two first heads at once
            session.rollback()
            if attempt == attempts:
                raise
    raise AssertionError("unreachable")



@dataclass(frozen=True)
class CandidateEvaluation:
    """What a gate decision is made on: the current state, the head version it was read at,
    and the candidate, both scored on the same suites (``before`` and ``after``). Its JSON
    keeps each score's value, stderr, n, suite version and metric; the per-sample scores stay
    in the eval rows' blobs (``with_samples`` reads them back).

    ``reuse`` says which of the candidate's outcomes were copied from the current state's rows
    (docs routed the same way in both) and how many docs lm-eval answered; None when the
    evaluation reused nothing by design (or was recorded before reuse existed)."""

    current_state_id: int
    head_version: int | None
    candidate_state_id: int
    new_skill: str
    earlier: tuple[str, ...]
    general: tuple[str, ...]
    before: dict[str, Score]
    after: dict[str, Score]
    reuse: ReuseRecord | None = None

    def is_current(self, current: ModelState, version: int | None) -> bool:
        """True while the base's head is still the state these scores were measured against."""
        return current.id == self.current_state_id and version == self.head_version

    def decide(self, policy: GatePolicy) -> Decision:
        return decide(policy, new_skill=self.new_skill, before=self.before, after=self.after,
                      earlier_skills=self.earlier, general_suites=self.general)

    def with_samples(self, session, blobs) -> CandidateEvaluation:
        """These scores with their per-sample scores read back from the eval rows (and blobs)
        they came from, so the decision pairs the two states prompt by prompt."""
        return replace(self, before=with_samples(session, blobs, self.current_state_id,
                                                 self.before),
                       after=with_samples(session, blobs, self.candidate_state_id, self.after))

    def as_json(self) -> dict:
        def scores(d: dict[str, Score]) -> dict:
            return {k: s.as_json() for k, s in d.items()}

        return {"current_state_id": self.current_state_id, "head_version": self.head_version,
                "candidate_state_id": self.candidate_state_id, "new_skill": self.new_skill,
                "earlier": list(self.earlier), "general": list(self.general),
                "before": scores(self.before), "after": scores(self.after),
                "reuse": self.reuse.as_json() if self.reuse is not None else None}

    @classmethod
    def from_json(cls, doc: dict) -> CandidateEvaluation:
        def scores(d: dict) -> dict[str, Score]:
            return {k: Score(**v) for k, v in d.items()}

        return cls(doc["current_state_id"], doc["head_version"], doc["candidate_state_id"],
                   doc["new_skill"], tuple(doc["earlier"]), tuple(doc["general"]),
                   scores(doc["before"]), scores(doc["after"]),
                   ReuseRecord.from_json(doc["reuse"]) if doc.get("reuse") else None)


def evaluate_candidate(session, blobs, model, tokenizer, pack: SkillPack, current: ModelState,
                       version: int | None, *, general: Suite | None = None,
                       tasks_dir: str | Path | None = None, router: str | None = None,
                       batch_size: int = 16, limit: int | None = None,
                       cache_dir: str | Path | None = None,
                       progress: Callable[[float], None] | None = None,
                       reuse: bool = True) -> CandidateEvaluation:
    """Build the candidate (``current`` + ``pack``, see states.candidate_state: a learned router
    is retrained for the new pack set, the general suite's training prompts as its NONE class)
    and evaluate ``current`` and the candidate on the same suites: every skill the candidate
    holds, and ``general``. The eval cache runs only what the table does not hold yet; rows
    are flushed in the caller's transaction. ``version`` is the head version ``current`` was
    read at; the gate refuses to decide on these scores once the head has moved.

    With ``reuse`` (evaluation.reuse), an earlier skill's docs that the candidate routes
    exactly as ``current`` did keep ``current``'s outcomes; only the docs whose route changed
    run again, so the cost stays flat as skills accumulate. The new skill's suite and the
    general suite always run in full. The result's ``reuse`` records what was copied."""
    learned = (router or current.router) == "learned"
    general_prompts = (suite_prompts(general, ROUTER_PROMPTS)
                       if general is not None and learned else ())
    general_test = (suite_prompts(general, ROUTER_PROMPTS, split="test")
                    if general is not None and learned else ())
    candidate = candidate_state(session, blobs, current, pack, model, tokenizer, router=router,
                                general_prompts=general_prompts, general_test=general_test)
    cand_view, cur_view = load_view(session, candidate), load_view(session, current)
    suites = state_suites(session, cand_view.skills, tasks_dir=tasks_dir, general=general)
    new_skill = cand_view.skills[-1]  # the pack is the candidate's last member
    todo = {s.name: missing_tasks(session, candidate.id, s, limit) for s in suites}
    planner = OutcomeReuse(
        session, blobs, model, tokenizer, cur_view, cand_view, limit=limit,
        skills=[s for s in cur_view.skills if s != new_skill], batch_size=batch_size,
        cache_dir=cache_dir) if reuse else None
    for done, (state, view, plan) in enumerate(
            ((current, cur_view, None), (candidate, cand_view, planner)), start=1):
        evaluate_state(session, state, suites,
                       state_loader(model, tokenizer, view, blobs, cache_dir=cache_dir),
                       batch_size=batch_size, limit=limit, blobs=blobs, reuse=plan)
        if progress is not None:
            progress(done / 2)
    return CandidateEvaluation(
        current.id, version, candidate.id, new_skill,
        earlier=tuple(s for s in cur_view.skills if s != new_skill),
        general=tuple(s.name for s in suites if s.skill_id is None),
        before=suite_scores(session, current.id, suites, limit=limit, blobs=blobs),
        after=suite_scores(session, candidate.id, suites, limit=limit, blobs=blobs),
        reuse=planner.record(candidate.id, suites, todo) if planner is not None else None)


def store_report(session, blobs, state: ModelState, decision: Decision,
                 pack: SkillPack | None = None) -> str:
    """The report of a decision on ``state`` as one HTML page in the blob store; its digest."""
    data = build_report(session, state=state, pack=pack, blobs=blobs)
    data.decision = decision.as_dict()
    return blobs.put_bytes(render_report(data, "html").encode("utf-8"))


def recorded_judge(blobs, pack: SkillPack, evaluation: CandidateEvaluation,
                   policy: GatePolicy, *, finetune: Score | None = None) -> Judge:
    """A judge for gate_pack that decides on recorded scores and never evaluates; the
    per-sample scores are read back from the eval rows, so the tests are paired. ``finetune``
    is the uncompressed fine-tune's score on the new skill's prompts (gate/reference.py), for
    the fidelity check.

    When the head is no longer the one the scores were measured against (another promotion
    won, before this gate or during one of gate_pack's attempts) it raises
    StaleEvaluationError, and the caller evaluates again on the new head.
    """
    def judge(session, current: ModelState,
              version: int | None) -> tuple[ModelState, Decision, str]:
        if not evaluation.is_current(current, version):
            raise StaleEvaluationError(
                f"Pack {pack.id} was evaluated against state {evaluation.current_state_id} (head "
                f"version {evaluation.head_version}); the head is now state {current.id} "
                f"(version {version}). Evaluate it again on the new head.")
        candidate = get_state(session, evaluation.candidate_state_id)
        scored = evaluation.with_samples(session, blobs)
        try:
            decision = decide(policy, new_skill=scored.new_skill, before=scored.before,
                              after=scored.after, earlier_skills=scored.earlier,
                              general_suites=scored.general, finetune=finetune)
        except EvaluationError as exc:  # e.g. two prompt sets: say which states they came from
            raise EvaluationError(
                f"Pack {pack.id}: current state {evaluation.current_state_id} and candidate "
                f"state {evaluation.candidate_state_id} cannot be compared: {exc}") from exc
        return candidate, decision, store_report(session, blobs, candidate, decision, pack)

    return judge


def make_judge(blobs, model, tokenizer, pack: SkillPack, *, policy: GatePolicy,
               general: Suite | None = None, tasks_dir: str | Path | None = None,
               router: str | None = None, batch_size: int = 16, limit: int | None = None,
               cache_dir: str | Path | None = None) -> Judge:
    """A judge for :func:`gate_pack` that evaluates on every attempt: evaluate_candidate against
    the head gate_pack read, then recorded_judge on those scores. After a lost race the eval
    cache makes the new attempt cost only the new candidate."""
    def judge(session, current: ModelState,
              version: int | None) -> tuple[ModelState, Decision, str]:
        evaluation = evaluate_candidate(session, blobs, model, tokenizer, pack, current, version,
                                        general=general, tasks_dir=tasks_dir, router=router,
                                        batch_size=batch_size, limit=limit, cache_dir=cache_dir)
        return recorded_judge(blobs, pack, evaluation, policy)(session, current, version)

    return judge
