"""Record a gate decision: pack status, audit row and head move in one serialised transaction."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.exc import IntegrityError

from ..catalog.models import BaseCheckpoint, ModelState, Promotion, SkillPack
from ..catalog.packs import set_pack_status
from ..catalog.schema import PackStatus
from ..catalog.states import advance_head, current_head, get_state
from ..errors import PromotionConflictError
from ..states.view import base_state
from .decision import Decision


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
