"""Paired tests, intervals and Holm's correction on hand-computed cases."""

import json

import numpy as np
import pytest

from skillstore.errors import EvaluationError
from skillstore.evaluation import stats
from skillstore.evaluation.stats import (
    holm,
    mcnemar_exact,
    one_sided,
    paired_bootstrap,
    paired_test,
    proportion_stderr,
    required_n,
    wilson_interval,
)


def pairs(both_right=0, lost=0, gained=0, both_wrong=0):
    """before/after 0/1 vectors with the given 2x2 cell counts (lost = b, gained = c)."""
    before = [1] * both_right + [1] * lost + [0] * gained + [0] * both_wrong
    after = [1] * both_right + [0] * lost + [1] * gained + [0] * both_wrong
    return before, after


# --- proportions -----------------------------------------------------------------------------

def test_wilson_8_of_10():
    # z = 1.95996; centre = (0.8 + z^2/20) / (1 + z^2/10) = 0.71668,
    # half = z * sqrt(0.016 + z^2/400) / (1 + z^2/10) = 0.22652
    ci = wilson_interval(8, 10)
    assert ci.low == pytest.approx(0.4902, abs=1e-4)
    assert ci.high == pytest.approx(0.9433, abs=1e-4)


def test_wilson_at_the_bounds_touches_them_with_nonzero_width():
    # At 0/n the upper end is z^2 / (n + z^2) = 3.8415 / 13.8415.
    none, every = wilson_interval(0, 10), wilson_interval(10, 10)
    assert none.low == 0.0 and none.high == pytest.approx(0.2775, abs=1e-4)
    assert every.high == 1.0 and every.low == pytest.approx(0.7225, abs=1e-4)


def test_wilson_narrows_with_lower_confidence():
    wide, narrow = wilson_interval(8, 10, 0.95), wilson_interval(8, 10, 0.80)
    assert wide.low < narrow.low < narrow.high < wide.high


@pytest.mark.parametrize("successes,n", [(11, 10), (-1, 10)])
def test_wilson_rejects_impossible_counts(successes, n):
    with pytest.raises(ValueError, match=f"got {successes} of 10"):
        wilson_interval(successes, n)


def test_wilson_n_zero_says_n_must_be_positive():
    with pytest.raises(ValueError, match="n must be > 0"):
        wilson_interval(0, 0)


def test_proportion_stderr_is_binomial_and_positive_inside_the_unit_interval():
    assert proportion_stderr(0.5, 100) == pytest.approx(0.05)
    assert proportion_stderr(0.01, 10) == pytest.approx(0.0314643, abs=1e-7)
    assert proportion_stderr(1.0, 10) == 0.0
    with pytest.raises(ValueError, match="n must be > 0"):
        proportion_stderr(0.5, 0)


# --- McNemar -----------------------------------------------------------------------------------

def test_mcnemar_b1_c8_exact_p_and_agresti_min_interval():
    before, after = pairs(both_right=6, lost=1, gained=8, both_wrong=5)
    t = mcnemar_exact(before, after)
    # 2 * P(X <= 1 | 9, 0.5) = 2 * (1 + 9) / 512
    assert t.p_value == pytest.approx(0.0390625, abs=1e-12)
    assert (t.n, t.b, t.c, t.test) == (20, 1, 8, "mcnemar-exact")
    assert t.difference == pytest.approx(7 / 20)
    assert (t.before, t.after) == (pytest.approx(7 / 20), pytest.approx(14 / 20))
    # b' = 1.5, c' = 8.5, n' = 22: centre 7/22, se = sqrt(10 - 49/22) / 22 = 0.126725
    assert t.low == pytest.approx(7 / 22 - 1.959964 * 0.126725, abs=1e-5)
    assert t.high == pytest.approx(7 / 22 + 1.959964 * 0.126725, abs=1e-5)


def test_mcnemar_balanced_discordance_has_p_one():
    # 2 * P(X <= 3 | 6, 0.5) = 2 * 42/64 > 1, capped
    before, after = pairs(both_right=4, lost=3, gained=3, both_wrong=2)
    t = mcnemar_exact(before, after)
    assert t.p_value == 1.0 and t.difference == 0.0
    assert t.low < 0.0 < t.high


def test_mcnemar_exact_tail_for_a_larger_count():
    # b = 2, c = 10: 2 * (1 + 12 + 66) / 4096
    t = mcnemar_exact(*pairs(both_right=3, lost=2, gained=10))
    assert t.p_value == pytest.approx(158 / 4096, abs=1e-12)


def test_mcnemar_all_agree_gives_p_one_d_zero_and_an_honest_interval():
    t = mcnemar_exact([True, False, True, True], [True, False, True, True])
    assert t.p_value == 1.0 and t.difference == 0.0 and (t.b, t.c) == (0, 0)
    # four agreeing prompts do not prove d = 0
    assert t.low < 0.0 < t.high


def test_mcnemar_every_prompt_flipped_is_not_zero_width():
    t = mcnemar_exact(*pairs(gained=5))
    assert t.difference == 1.0 and t.high == 1.0
    assert t.low < 0.9


def test_mcnemar_mismatched_lengths_names_both():
    with pytest.raises(ValueError, match="before has 3 values, after has 4"):
        mcnemar_exact([1, 0, 1], [1, 0, 1, 1])


def test_mcnemar_rejects_non_binary_and_empty():
    with pytest.raises(ValueError, match=r"after\[1\] is 0.5"):
        mcnemar_exact([1, 0], [1, 0.5])
    with pytest.raises(EvaluationError, match="empty"):
        mcnemar_exact([], [])


def test_one_sided_bound_is_the_two_sided_interval_at_lower_confidence():
    before, after = pairs(both_right=6, lost=1, gained=8, both_wrong=5)
    assert one_sided(0.95) == pytest.approx(0.90)
    two, one = mcnemar_exact(before, after), mcnemar_exact(before, after, one_sided(0.95))
    assert one.one_sided_confidence == pytest.approx(0.95)
    assert two.low < one.low and one.high < two.high
    # z(0.95 one-sided) = 1.644854
    assert one.low == pytest.approx(7 / 22 - 1.644854 * 0.126725, abs=1e-5)


def test_results_are_json_able():
    t = mcnemar_exact(*pairs(lost=1, gained=2))
    assert json.loads(json.dumps(t.as_dict()))["b"] == 1
    assert json.loads(json.dumps(wilson_interval(1, 2).as_dict())).keys() == {"low", "high"}
    assert json.loads(json.dumps(holm({"a": 0.01})["a"].as_dict())) == {
        "adjusted_p": 0.01, "reject": True}


# --- bootstrap ---------------------------------------------------------------------------------

def scores(n=200, seed=1):
    return np.random.default_rng(seed).uniform(size=n).tolist()


def test_bootstrap_is_deterministic_given_the_seed():
    before, after = scores(seed=1), scores(seed=2)
    assert paired_bootstrap(before, after, seed=7) == paired_bootstrap(before, after, seed=7)
    assert paired_bootstrap(before, after, seed=7) != paired_bootstrap(before, after, seed=8)


def test_bootstrap_result_does_not_depend_on_block_size(monkeypatch):
    before, after = scores(seed=1), scores(seed=2)
    whole = paired_bootstrap(before, after, iterations=101)
    monkeypatch.setattr(stats, "_BLOCK_CELLS", 7 * 200)
    assert paired_bootstrap(before, after, iterations=101) == whole


def test_bootstrap_constant_shift_gives_a_point_interval_and_tiny_p():
    before = scores()
    t = paired_bootstrap(before, [v + 0.1 for v in before], iterations=999)
    assert t.test == "paired-bootstrap" and t.n == 200 and t.b is None
    assert t.difference == pytest.approx(0.1)
    assert t.low == pytest.approx(0.1) and t.high == pytest.approx(0.1)
    assert t.p_value == pytest.approx(2 / 1000)


def test_bootstrap_identical_vectors_give_zero_and_p_one():
    before = scores()
    t = paired_bootstrap(before, list(before))
    assert t.difference == 0.0 and t.p_value == 1.0 and t.low == t.high == 0.0


def test_bootstrap_interval_matches_the_normal_one_for_a_known_spread():
    # per-prompt differences alternate 0 and 1: mean 0.5, sd 0.5, se 0.025 at n = 400
    t = paired_bootstrap([0.0] * 400, [0.0, 1.0] * 200, iterations=4000)
    assert t.low == pytest.approx(0.5 - 1.96 * 0.025, abs=0.006)
    assert t.high == pytest.approx(0.5 + 1.96 * 0.025, abs=0.006)


def test_bootstrap_is_paired_a_small_consistent_gain_is_detected():
    # Scores vary a lot across prompts but after beats before by ~0.02 on each one; comparing
    # two independent means could not see it, the paired bootstrap must.
    before = scores(n=300)
    noise = np.random.default_rng(3).normal(0.0, 0.005, size=300)
    t = paired_bootstrap(before, (np.asarray(before) + 0.02 + noise).tolist())
    assert 0.015 < t.low < t.difference < t.high < 0.025
    assert t.p_value < 0.01


def test_bootstrap_rejects_nan_and_mismatched_lengths():
    with pytest.raises(ValueError, match="NaN"):
        paired_bootstrap([0.1, 0.2], [0.1, float("nan")])
    with pytest.raises(ValueError, match="before has 2 values, after has 1"):
        paired_bootstrap([0.1, 0.2], [0.1])


# --- dispatch ----------------------------------------------------------------------------------

@pytest.mark.parametrize("before,after", [
    ([True, False, True], [True, True, True]),
    ([1, 0, 1], [1, 1, 1]),
    ([1.0, 0.0, 1.0], [1.0, 1.0, 1.0]),
])
def test_paired_test_uses_mcnemar_for_binary_scores(before, after):
    t = paired_test(before, after)
    assert t.test == "mcnemar-exact" and (t.b, t.c) == (0, 1)


def test_paired_test_uses_the_bootstrap_otherwise_and_passes_options():
    before, after = [1.0, 0.0, 0.5, 1.0], [1.0, 1.0, 0.5, 0.0]
    t = paired_test(before, after, seed=3, iterations=50, confidence=0.9)
    assert t.test == "paired-bootstrap"
    assert t == paired_bootstrap(before, after, seed=3, iterations=50, confidence=0.9)


# --- Holm --------------------------------------------------------------------------------------

def test_holm_step_down_is_monotone_and_rejects_only_the_smallest():
    out = holm({"a": 0.01, "b": 0.04, "c": 0.03}, alpha=0.05)
    # sorted a, c, b: 3 * 0.01, 2 * 0.03, max(0.06, 1 * 0.04)
    assert out["a"].adjusted_p == pytest.approx(0.03)
    assert out["c"].adjusted_p == pytest.approx(0.06)
    assert out["b"].adjusted_p == pytest.approx(0.06)
    assert [k for k, r in out.items() if r.reject] == ["a"]
    assert list(out) == ["a", "b", "c"]


def test_holm_caps_adjusted_p_at_one():
    out = holm({"a": 0.6, "b": 0.7})
    assert out["a"].adjusted_p == 1.0 and out["b"].adjusted_p == 1.0
    assert not out["a"].reject and not out["b"].reject


def test_holm_rejects_bad_inputs_and_accepts_none():
    assert holm({}) == {}
    with pytest.raises(ValueError, match="'a'"):
        holm({"a": 1.5})


# --- planning ----------------------------------------------------------------------------------

def test_required_n_normal_approximation():
    # (1.644854 + 0.841621)^2 * 2 * 0.8 * 0.2 / 0.05^2 = 791.4
    assert required_n(0.8, 0.05) == 792
    # power 0.5: 1.644854^2 * 0.32 / 0.0025 = 346.3
    assert required_n(0.8, 0.05, power=0.5) == 347
    assert required_n(0.5, 0.05) > required_n(0.8, 0.05) > required_n(0.8, 0.1)


def test_required_n_refuses_a_degenerate_accuracy():
    with pytest.raises(ValueError, match="0 < p < 1"):
        required_n(1.0, 0.05)
