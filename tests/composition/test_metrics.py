"""Continual-learning metrics on hand-computed matrices."""

import pytest

from skillstore.errors import EvaluationError
from skillstore.evaluation.metrics import (
    average_accuracy,
    backward_transfer,
    continual_metrics,
    forgetting,
    forward_transfer,
)

# R[i][j]: score on skill j after stage i. Skill 0 peaks at stage 1 (0.95), not at stage 0,
# which is what separates Chaudhry's max-form forgetting from BWT.
R = [[0.90, 0.10, 0.00],
     [0.95, 0.80, 0.20],
     [0.60, 0.50, 0.95]]
BASE = [0.00, 0.05, 0.10]


def test_average_accuracy_is_the_mean_of_the_last_row():
    assert average_accuracy(R) == pytest.approx((0.60 + 0.50 + 0.95) / 3)


def test_bwt_compares_final_score_with_score_just_after_learning():
    # ((0.60 - 0.90) + (0.50 - 0.80)) / 2
    assert backward_transfer(R) == pytest.approx(-0.30)


def test_forgetting_uses_the_best_earlier_score():
    # skill 0: max(0.90, 0.95) - 0.60 = 0.35; skill 1: max(0.10, 0.80) - 0.50 = 0.30
    assert forgetting(R) == pytest.approx(0.325)


def test_forward_transfer_is_against_the_base():
    # ((R[0][1] - b1) + (R[1][2] - b2)) / 2 = ((0.10 - 0.05) + (0.20 - 0.10)) / 2
    assert forward_transfer(R, BASE) == pytest.approx(0.075)


def test_no_forgetting_gives_zero_and_improvement_gives_positive_bwt():
    perfect = [[1.0, 0.0], [1.0, 1.0]]
    assert backward_transfer(perfect) == 0.0 and forgetting(perfect) == 0.0
    better = [[0.5, 0.0], [0.7, 0.9]]
    assert backward_transfer(better) == pytest.approx(0.2)
    assert forgetting(better) == pytest.approx(-0.2)


def test_single_stage_has_no_transfer_metrics():
    m = continual_metrics([[0.4]], [0.1])
    assert m.average_accuracy == pytest.approx(0.4)
    assert m.bwt is None and m.forgetting is None and m.forward_transfer is None


def test_unmeasured_future_skills_are_allowed_but_not_learned_ones():
    lower = [[0.9, None, None], [0.95, 0.8, None], [0.6, 0.5, 0.95]]
    m = continual_metrics(lower, BASE)
    assert m.bwt == pytest.approx(-0.30) and m.forgetting == pytest.approx(0.325)
    assert m.forward_transfer is None
    with pytest.raises(EvaluationError, match="skill 0 after stage 1"):
        continual_metrics([[0.9, None], [None, 0.8]])


@pytest.mark.parametrize("bad", [[], [[0.1, 0.2]], [[0.1, 0.2], [0.3]], [[float("nan")]],
                                 [[0.5, 0.1], [0.4, None]]])
def test_malformed_matrices_are_refused(bad):
    with pytest.raises(EvaluationError):
        continual_metrics(bad)


def test_base_scores_must_cover_every_skill():
    with pytest.raises(EvaluationError, match="evaluate the base"):
        forward_transfer(R, [0.0, 0.0])


def test_forgetting_ignores_scores_measured_before_the_skill_was_learned():
    # R[0][1] (skill 1 just before it was learned) is the largest score in column 1; Chaudhry's
    # max runs over stages 1 <= l < 2 only: skill 0: max(0.9, 0.8) - 0.6; skill 1: 0.7 - 0.5
    before_peak = [[0.90, 0.99, 0.00],
                   [0.80, 0.70, 0.10],
                   [0.60, 0.50, 0.95]]
    assert forgetting(before_peak) == pytest.approx((0.30 + 0.20) / 2)


# Skills alpha (learned), beta (rejected: its row is the state that stayed), gamma (learned),
# delta (inconclusive). Later states were never measured on beta.
ATTEMPTED = [[0.90, 0.30, 0.25, None],
             [0.90, 0.30, 0.25, None],
             [0.85, None, 0.80, 0.40],
             [0.85, None, 0.80, 0.40]]
LEARNED = [True, False, True, False]


def test_unlearned_skills_count_in_acc_and_not_in_bwt_or_forgetting():
    m = continual_metrics(ATTEMPTED, [0.1, 0.05, 0.2, 0.3], learned=LEARNED)
    assert m.average_accuracy is None  # the final state's score on beta was never measured
    assert m.learned_average_accuracy == pytest.approx((0.85 + 0.80) / 2)
    # over the learned stages and skills only: [[0.90, 0.25], [0.85, 0.80]]
    assert m.bwt == pytest.approx(-0.05) and m.forgetting == pytest.approx(0.05)
    assert m.forward_transfer == pytest.approx(0.25 - 0.2)
    full = [row[:1] + [0.3] + row[2:] for row in ATTEMPTED]
    assert continual_metrics(full, learned=LEARNED).average_accuracy == pytest.approx(
        (0.85 + 0.30 + 0.80 + 0.40) / 4)


def test_nothing_learned_leaves_only_the_final_states_accuracy():
    m = continual_metrics([[0.2, 0.1], [0.2, 0.1]], learned=[False, False])
    assert m.average_accuracy == pytest.approx(0.15)
    assert m.bwt is None and m.forgetting is None and m.learned_average_accuracy is None
    with pytest.raises(EvaluationError, match="learned flags"):
        continual_metrics([[0.2]], learned=[True, False])


def test_a_score_split_by_prompts_keeps_its_samples():
    from skillstore.evaluation.scores import Score, subset

    score = Score(0.75, 0.2, 4, {"0": 1.0, "1": 0.0, "2": 1.0, "3": 1.0}, version="v",
                  metric="exact_match")
    part = subset(score, {"0", "2", "9"})  # "9" was never asked: left out
    assert (part.value, part.n, part.samples) == (1.0, 2, {"0": 1.0, "2": 1.0})
    assert (part.version, part.metric, part.stderr) == ("v", "exact_match", 0.0)
    assert part.interval.low < 0.5 < part.interval.high == 1.0  # Wilson: 2 of 2 is no proof
    half = subset(score, {"0", "1"})
    assert half.value == 0.5 and half.stderr == pytest.approx((0.25 / 2) ** 0.5)
    graded = subset(Score(0.6, 0.1, 2, {"0": 0.5, "1": 0.7}), {"0", "1"})
    assert graded.stderr == pytest.approx(0.1)  # sample sd 0.1414 / sqrt(2)
    assert subset(score, {"x"}) is None and subset(Score(0.5, 0.1, 10), {"0"}) is None
