"""Faithful: the pack state keeps min_fidelity of the uncompressed fine-tune's score on the new
skill's prompts, judged on the paired per-prompt differences; the gate step reads the fine-tune's
score that the evaluate step recorded."""

from __future__ import annotations

import statistics

import pytest
from pydantic import ValidationError

from skillstore.catalog import get_job, get_pack
from skillstore.catalog.schema import PackStatus
from skillstore.errors import EvaluationError
from skillstore.evaluation import Score
from skillstore.evaluation.cache import samples_bytes
from skillstore.gate import GatePolicy, decide
from skillstore.gate.reference import finetune_score
from skillstore.pipeline import steps as gating
from skillstore.pipeline.lifecycle import forget_output, output, record_output

from .test_decision import LEARNED, outcomes
from .test_gate_step import evaluated_job, no_model, sent  # noqa: F401 (fixtures)


def judged(finetune: list[int] | None, pack: list[int], policy=GatePolicy()):
    """Decide on a new skill 'add' that went from nothing to ``pack``, with the fine-tune's
    per-prompt outcomes ``finetune`` (same prompts)."""
    before = {"add": outcomes([0] * len(pack))}
    after = {"add": outcomes(pack)}
    return decide(policy, new_skill="add", before=before, after=after, earlier_skills=[],
                  general_suites=(), finetune=None if finetune is None else outcomes(finetune))


def fidelity_of(decision):
    (check,) = [c for c in decision.checks if c.kind == "fidelity"]
    return check


def margins(finetune: list[int], pack: list[int], keep: float = 0.95) -> list[float]:
    return [p - keep * f for f, p in zip(finetune, pack, strict=True)]


def test_a_pack_that_answers_what_its_fine_tune_answers_is_faithful():
    finetune = [1] * 90 + [0] * 10
    d = judged(finetune, finetune)
    check = fidelity_of(d)
    assert check.estimate == pytest.approx(statistics.fmean(margins(finetune, finetune)))  # .045
    assert check.low > 0.0 and check.status == "passed" and check.test == "paired-bootstrap"
    assert (check.before, check.after, check.n) == (0.9, 0.9, 100)
    assert d.promote and d.verdict == "promoted"


def test_a_pack_that_lost_its_skill_in_compression_is_rejected():
    """The fine-tune answers 90 of 100, the pack only 40 of those: the gain over the current
    state (0 -> 0.40) is real, so only the fidelity check can see the loss."""
    finetune, pack = [1] * 90 + [0] * 10, [1] * 40 + [0] * 60
    d = judged(finetune, pack)
    check = fidelity_of(d)
    assert check.estimate == pytest.approx(statistics.fmean(margins(finetune, pack)))  # -.455
    assert check.high < 0.0 and check.status == "failed"
    assert "compression lost the skill" in check.reason and "keeps 0.444" in check.reason
    gain = next(c for c in d.checks if c.kind == "gain")
    assert gain.status == "passed"
    assert not d.promote and d.verdict == "rejected"


def test_three_lost_of_a_hundred_is_inconclusive_at_n_100():
    """0.97 of a perfect fine-tune is above 0.95 but, on 100 prompts, not provably: the
    margins are +0.05 (97 prompts) and -0.95 (3), mean +0.02 with standard error ~0.017."""
    finetune, pack = [1] * 100, [1] * 97 + [0] * 3
    d = judged(finetune, pack)
    check = fidelity_of(d)
    values = margins(finetune, pack)
    se = statistics.pstdev(values) / len(values) ** 0.5
    assert check.estimate == pytest.approx(0.02)
    assert check.low == pytest.approx(0.02 - 1.6449 * se, abs=0.01)  # about -0.008
    assert check.low < 0.0 < check.high and check.status == "inconclusive"
    assert check.needed_n > 100 and d.verdict == "inconclusive"


def test_a_fine_tune_that_scored_nothing_asks_nothing_of_the_pack():
    check = fidelity_of(judged([0] * 50, [0] * 50, GatePolicy(min_gain=-1.0)))
    assert check.passed and "scored 0" in check.reason


def test_min_fidelity_zero_turns_the_check_off_and_a_missing_fine_tune_is_noted():
    off = judged([1] * 100, [0] * 100, GatePolicy(min_gain=-1.0, min_fidelity=0.0))
    assert [c.kind for c in off.checks] == ["gain"] and off.notes == ()
    missing = judged(None, [1] * 90 + [0] * 10)
    assert [c.kind for c in missing.checks] == ["gain"]
    assert missing.notes == ("fidelity not checked: no score of the uncompressed fine-tune "
                             "was given",)


def test_a_fine_tune_scored_on_other_prompts_is_refused():
    before, after = LEARNED
    other = Score(0.9, 0.03, 100, {f"x{i}": 1.0 for i in range(100)}, version="v1",
                  metric="exact_match")
    with pytest.raises(EvaluationError, match="'add' was evaluated on different prompts"):
        decide(GatePolicy(), new_skill="add", before={"add": before}, after={"add": after},
               earlier_skills=[], general_suites=(), finetune=other)


@pytest.mark.parametrize("value", [-0.1, 1.5])
def test_a_min_fidelity_outside_0_to_1_is_refused(value):
    with pytest.raises(ValidationError, match="min_fidelity"):
        GatePolicy(min_fidelity=value)


def test_finetune_score_reads_its_samples_back(catalog):
    samples = {"0": 1.0, "1": 0.0}
    record = {"value": 0.5, "stderr": 0.35, "n": 2, "version": "v:limit=2",
              "metric": "exact_match", "suite": "add",
              "samples_digest": catalog.blobs.put_bytes(samples_bytes(samples))}
    score = finetune_score(catalog.blobs, record)
    assert (score.value, score.n, score.samples, score.version) == (0.5, 2, samples, "v:limit=2")
    assert finetune_score(catalog.blobs, None) is None


@pytest.mark.usefixtures("no_model", "sent")
@pytest.mark.parametrize(("finetune", "verdict"), [(0.90, "promoted"), (0.99, "rejected")])
def test_the_gate_step_judges_the_fine_tune_the_evaluate_step_recorded(catalog, finetune,
                                                                      verdict):
    """The recorded pack state scores 0.90 (stderr 0.01, n 100, no samples: unpaired). A
    fine-tune at 0.90 is kept; one at 0.99 asks for 0.94, which 0.90 is shown to miss."""
    job_id, pack_id = evaluated_job(catalog)
    with catalog.session() as s:
        job = get_job(s, job_id)
        recorded = {**output(job, "evaluate"),
                    "finetune": {"value": finetune, "stderr": 0.01, "n": 100, "version": None,
                                 "metric": None, "suite": "alpha", "samples_digest": None}}
        forget_output(s, job, "evaluate")
        record_output(s, job, "evaluate", recorded)
        s.commit()
    with catalog.session() as s:
        out = gating.gate(s, job_id, catalog.settings)
    assert out["verdict"] == verdict
    with catalog.session() as s:
        pack = get_pack(s, pack_id)
        assert pack.status == (PackStatus.promoted if verdict == "promoted"
                               else PackStatus.rejected)
    fidelity = [r for r in out["reasons"] if "fine-tune" in r]
    assert (verdict == "rejected") == bool(fidelity), out["reasons"]
