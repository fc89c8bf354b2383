"""The pipeline's gate step decides on the scores its evaluate step recorded and never runs a
model: a fresh evaluation is promoted and the job finishes; a stale one goes back to evaluate."""

from __future__ import annotations

import pytest

from skillstore.catalog import JobStatus, create_job, get_job, get_pack, promotions_of
from skillstore.catalog.models import BaseCheckpoint
from skillstore.catalog.schema import PackStatus
from skillstore.errors import EvaluationError
from skillstore.evaluation import Score
from skillstore.gate import CandidateEvaluation, GatePolicy, head_of, recorded_judge
from skillstore.pipeline import steps as gating
from skillstore.pipeline.lifecycle import output, record_output
from skillstore.pipeline.request import LearnRequest
from skillstore.states import extend_state, manual_override

from .conftest import make_base, make_pack


@pytest.fixture
def no_model(monkeypatch):
    """The gate runs on the CPU queue: loading a model or evaluating there is a bug."""
    def refuse(*_a, **_kw):
        raise AssertionError("the gate step must not evaluate")

    monkeypatch.setattr(gating, "evaluate_candidate", refuse)
    monkeypatch.setattr("skillstore.models.load_causal_lm", refuse)


@pytest.fixture
def sent(monkeypatch):
    calls = []
    monkeypatch.setattr(gating, "send_chain",
                        lambda session, settings, job, stage: calls.append((job.id, stage)))
    return calls


def evaluated_job(catalog, skill="alpha") -> tuple[int, int]:
    """A running job whose pack was evaluated against the base's current head (gain 0.8, no
    general suite), as the evaluate step records it; returns (job id, pack id)."""
    with catalog.session() as s:
        base = make_base(s)
        pack = make_pack(s, base, skill)
        request = LearnRequest(skill=skill, base=base.name)
        job = create_job(s, kind="learn", request=request.model_dump(mode="json"),
                         base_id=base.id, skill_id=pack.skill_id)
        job.pack_id, job.status, job.stage = pack.id, JobStatus.running, "gate"
        current, version = head_of(s, base)
        candidate = extend_state(s, base, current, pack)
        evaluation = CandidateEvaluation(
            current.id, version, candidate.id, skill, earlier=(), general=(),
            before={skill: Score(0.1, 0.01, 100)}, after={skill: Score(0.9, 0.01, 100)})
        record_output(s, job, "evaluate", evaluation.as_json())
        return job.id, pack.id


def test_the_gate_promotes_on_recorded_scores_and_finishes_the_job(catalog, no_model, sent):
    job_id, pack_id = evaluated_job(catalog)
    with catalog.session() as s:
        out = gating.gate(s, job_id, catalog.settings)
    assert out["verdict"] == "promoted" and sent == []
    with catalog.session() as s:
        job, pack = get_job(s, job_id), get_pack(s, pack_id)
        assert job.status == JobStatus.succeeded and output(job, "gate") == out
        assert pack.status == PackStatus.promoted
        audit = promotions_of(s, pack_id)[-1]
        state, version = head_of(s, s.get(BaseCheckpoint, pack.base_id))
        candidate = CandidateEvaluation.from_json(output(job, "evaluate")).candidate_state_id
        assert state.id == candidate == audit.state_id and version == 1
    assert "Decision: promoted" in catalog.blobs.get_bytes(audit.report_ref).decode()
    with catalog.session() as s:  # a redelivered gate returns what it recorded
        assert gating.gate(s, job_id, catalog.settings) == out


def test_a_stale_evaluation_is_sent_back_to_evaluate_not_re_evaluated(catalog, no_model, sent):
    job_id, pack_id = evaluated_job(catalog)
    with catalog.session() as s:  # another pack is promoted after the evaluation was recorded
        other = make_pack(s, s.get(BaseCheckpoint, get_pack(s, pack_id).base_id), "beta")
        manual_override(s, catalog.blobs, other, "promote", reason="meanwhile",
                        actor="test")
    with catalog.session() as s:
        out = gating.gate(s, job_id, catalog.settings)
    assert out == {"sent_back_to": "evaluate"} and sent == [(job_id, "evaluate")]
    with catalog.session() as s:
        job, pack = get_job(s, job_id), get_pack(s, pack_id)
        assert output(job, "evaluate") is None and output(job, "gate") is None
        assert job.status == JobStatus.running  # the chain goes on from evaluate
        assert pack.status == PackStatus.candidate
        assert [p.to_status for p in promotions_of(s, pack_id)] == [PackStatus.candidate]


def test_a_gate_that_lost_the_race_to_its_own_twin_finishes_with_the_twins_verdict(
        catalog, no_model, sent, monkeypatch):
    """Two attempts of one gate (a chain resumed beside a redelivered message): the first
    promotes the pack, which moves the head, so the second finds its scores "stale". It must
    not forget the evaluation and send the job back: the job ends with the verdict (found by
    the kill test: a job succeeded without its evaluate output)."""
    job_id, pack_id = evaluated_job(catalog)
    real_gate_pack = gating.gate_pack

    def twin_wins_first(session, pack, judge, **kw):
        with catalog.session() as twin:  # the other attempt decides and commits meanwhile
            real_gate_pack(twin, twin.get(type(pack), pack.id), judge, **kw)
        return real_gate_pack(session, pack, judge, **kw)  # now stale: the head moved

    monkeypatch.setattr(gating, "gate_pack", twin_wins_first)
    with catalog.session() as s:
        out = gating.gate(s, job_id, catalog.settings)
    assert sent == [] and out["verdict"] == "promoted"
    with catalog.session() as s:
        job, pack = get_job(s, job_id), get_pack(s, pack_id)
        assert job.status == JobStatus.succeeded and output(job, "evaluate") is not None
        assert pack.status == PackStatus.promoted


def test_a_decision_on_two_prompt_sets_is_refused_naming_both_states(catalog):
    with catalog.session() as s:
        base = make_base(s)
        pack = make_pack(s, base, "alpha")
        current, version = head_of(s, base)
        candidate = extend_state(s, base, current, pack)
        before = Score(0.5, 0.35, 2, {"0": 1.0, "1": 0.0})
        after = Score(0.5, 0.35, 2, {"0": 1.0, "7": 0.0})  # prompt 7 was never asked before
        evaluation = CandidateEvaluation(current.id, version, candidate.id, "alpha", earlier=(),
                                         general=(), before={"alpha": before},
                                         after={"alpha": after})
        judge = recorded_judge(catalog.blobs, pack, evaluation, GatePolicy())
        with pytest.raises(EvaluationError, match=(
                rf"current state {current.id} and candidate state {candidate.id} cannot be "
                r"compared: Suite 'alpha' was evaluated on different prompts")):
            judge(s, current, version)
