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
