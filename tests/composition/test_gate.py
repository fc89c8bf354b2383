"""The promotion gate: decisions on built results, the audited transaction, racing promotions."""

from __future__ import annotations

import threading

import pytest
from pydantic import ValidationError
from sqlalchemy.orm import Session

from skillstore.catalog import (
    advance_head,
    current_state,
    inconclusive_packs,
    promotions_of,
    set_pack_status,
    status_label,
)
from skillstore.catalog.schema import PackStatus
from skillstore.errors import EvaluationError, PromotionConflictError
from skillstore.evaluation import Score
from skillstore.gate import (
    GatePolicy,
    Thresholds,
    decide,
    gate_pack,
    head_of,
    record_decision,
)
from skillstore.states import base_state, extend_state

from .conftest import make_base, make_pack

POLICY = GatePolicy(min_gain=0.10, max_drop=0.02, max_general_drop=0.01)


def binary(right: int, n: int) -> Score:
    """A suite score with its per-prompt 0/1 outcomes: the first ``right`` prompts right."""
    samples = {str(i): 1.0 if i < right else 0.0 for i in range(n)}
    return Score(right / n, (right / n * (1 - right / n) / n) ** 0.5, n, samples, version="v1",
                 metric="exact_match")


BEFORE = {"reverse": binary(180, 200), "add": binary(20, 200), "general": binary(240, 300)}


def judge(after, policy=POLICY):
    return decide(policy, new_skill="add", before=BEFORE, after=after, earlier_skills=["reverse"])


def test_gate_promotes_a_gain_without_forgetting():
    d = judge({"reverse": binary(180, 200), "add": binary(170, 200),
               "general": binary(240, 300)})
    assert d.promote and d.verdict == "promoted"
    assert [c.status for c in d.checks] == ["passed"] * 3
    assert [c.test for c in d.checks] == ["mcnemar-exact-cc"] + ["mcnemar-exact"] * 2


def test_gate_rejects_too_little_gain():
    # 20 -> 30 of 200: the gain's upper bound is below 0.10, so it was not learned
    d = judge({"reverse": binary(180, 200), "add": binary(30, 200),
               "general": binary(240, 300)})
    assert not d.promote and d.verdict == "rejected"
    assert any("too little gain" in r for r in d.reasons)


def test_gate_rejects_forgetting_beyond_tolerance():
    d = judge({"reverse": binary(150, 200), "add": binary(170, 200),
               "general": binary(240, 300)})
    assert not d.promote and d.verdict == "rejected"
    (failed,) = [c for c in d.checks if c.status == "failed"]
    assert failed.suite == "reverse" and failed.low > 0.02
    assert d.reasons[0].startswith("forgot reverse")


def test_general_suite_drop_rejects():
    d = judge({"reverse": binary(180, 200), "add": binary(170, 200),
               "general": binary(200, 300)})
    assert not d.promote and "general" in d.reasons[0]


def test_per_skill_thresholds_override_the_global_ones():
    lenient = POLICY.model_copy(update={"per_skill": {"add": Thresholds(min_gain=0.01)}})
    after = {"reverse": binary(180, 200), "add": binary(35, 200), "general": binary(240, 300)}
    assert not judge(after).promote and judge(after, lenient).promote


def test_policy_is_frozen_and_validated():
    with pytest.raises(ValidationError):
        GatePolicy(min_gain=-1.1)
    with pytest.raises(ValidationError, match="confidence"):
        GatePolicy(confidence=-0.95)
    with pytest.raises(ValidationError, match="max_general_drop"):
        GatePolicy(max_general_drop=1.5)
    with pytest.raises(ValidationError, match="set max_general_drop instead"):
        GatePolicy(per_skill={"general": Thresholds(max_drop=0.1)})
    with pytest.raises(ValidationError):
        POLICY.min_gain = 0.5  # type: ignore[misc]


def test_missing_scores_name_the_suite():
    with pytest.raises(EvaluationError, match="'reverse'"):
        judge({"add": binary(170, 200), "general": binary(240, 300)})


PROMOTE = {"reverse": binary(180, 200), "add": binary(170, 200), "general": binary(240, 300)}
FORGOT = {"reverse": binary(100, 200), "add": binary(170, 200), "general": binary(240, 300)}


def _setup(session):
    base = make_base(session)
    start = base_state(session, base)
    advance_head(session, base.id, start.id, expected_version=None)
    return base


def test_promotion_moves_head_and_audits_in_one_transaction(catalog):
    with catalog.session() as s:
        base = _setup(s)
        pack = make_pack(s, base, "add")
        current, version = head_of(s, base)
        cand = extend_state(s, base, current, pack)
        good = judge(PROMOTE)
        audit = record_decision(s, pack, good, candidate=cand, expected_version=version,
                                report_ref="sha256:report", actor="tester")
    with catalog.session() as s:
        assert current_state(s, base.id).id == cand.id
        trail = promotions_of(s, pack.id)
        assert ([(p.from_status, p.to_status) for p in trail][-1]
                == (PackStatus.candidate, PackStatus.promoted))
        assert trail[-1].report_ref == "sha256:report" and trail[-1].state_id == cand.id
        assert "all checks passed" in audit.reason


def test_rejection_keeps_the_head_and_records_the_reason(catalog):
    with catalog.session() as s:
        base = _setup(s)
        pack = make_pack(s, base, "add")
        current, version = head_of(s, base)
        cand = extend_state(s, base, current, pack)
        bad = judge(FORGOT)
        record_decision(s, pack, bad, candidate=cand, expected_version=version)
    with catalog.session() as s:
        assert current_state(s, base.id).id == current.id
        last = promotions_of(s, pack.id)[-1]
        assert last.to_status == PackStatus.rejected and "forgot reverse" in last.reason


def test_an_inconclusive_rejection_is_told_apart_from_a_finding(catalog):
    """The gate records an inconclusive decision as rejected; `inconclusive_packs` and
    `status_label` tell it from a rejection that found forgetting, and a later manual status
    change ends it."""
    undecided = {**FORGOT, "reverse": binary(176, 200)}  # dropped 0.02: on the threshold
    with catalog.session() as s:
        base = _setup(s)
        unsure, forgot = make_pack(s, base, "add"), make_pack(s, base, "reverse")
        current, version = head_of(s, base)
        record_decision(s, unsure, judge({**undecided, "add": binary(170, 200)}),
                        candidate=extend_state(s, base, current, unsure),
                        expected_version=version)
        record_decision(s, forgot, judge(FORGOT), candidate=extend_state(s, base, current, forgot),
                        expected_version=version)
        assert unsure.status == forgot.status == PackStatus.rejected
        assert inconclusive_packs(s, [unsure.id, forgot.id]) == {unsure.id}
        assert [status_label(p.status, p.id == unsure.id) for p in (unsure, forgot)] == [
            "inconclusive", "rejected"]
        set_pack_status(s, unsure, "retired", reason="by hand", actor="tester")
        set_pack_status(s, unsure, "promoted", reason="by hand", actor="tester")
        set_pack_status(s, unsure, "rejected", reason="by hand", actor="tester")
        assert inconclusive_packs(s, [unsure.id, forgot.id]) == set()


def test_a_stale_promotion_is_refused(catalog):
    with catalog.session() as s:
        base = _setup(s)
        first, second = make_pack(s, base, "add"), make_pack(s, base, "reverse")
        current, version = head_of(s, base)
        good = judge(PROMOTE)
        record_decision(s, first, good, candidate=extend_state(s, base, current, first),
                        expected_version=version)
        with pytest.raises(PromotionConflictError, match="re-evaluate"):
            record_decision(s, second, good, candidate=extend_state(s, base, current, second),
                            expected_version=version)


def test_racing_promotions_are_serialised_and_lose_nothing(db_engine):
    """Two workers judge different packs against the same head at the same moment."""
    with Session(db_engine) as s:
        base = _setup(s)
        packs = [make_pack(s, base, "add"), make_pack(s, base, "reverse")]
        s.commit()
        base_id, pack_ids = base.id, [p.id for p in packs]
    barrier = threading.Barrier(2, timeout=30)
    outcomes, errors = {}, []

    def worker(pack_id: int) -> None:
        from skillstore.catalog import get_pack

        first = [True]

        def judge_fn(session, current, version):
            if first[0]:
                first[0] = False
                barrier.wait()  # both have read the same head before either writes
            b = session.get(type(base), base_id)
            cand = extend_state(session, b, current, get_pack(session, pack_id))
            return cand, judge(PROMOTE), None

        try:
            with Session(db_engine, expire_on_commit=False) as session:
                outcomes[pack_id] = gate_pack(session, get_pack(session, pack_id), judge_fn)
        except Exception as exc:  # reported below with its type
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(pid,)) for pid in pack_ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert sorted(o.attempts for o in outcomes.values()) == [1, 2]
    with Session(db_engine) as s:
        state = current_state(s, base_id)
        assert sorted(m.pack_id for m in state.members) == sorted(pack_ids)
        head, version = head_of(s, s.get(type(base), base_id))
        assert version == 3
        for pid in pack_ids:
            assert promotions_of(s, pid)[-1].to_status == PackStatus.promoted
