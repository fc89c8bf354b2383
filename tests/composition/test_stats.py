"""Paired tests, intervals and Holm's correction on hand-computed cases."""

import json
import math
from statistics import NormalDist

import numpy as np
import pytest

from skillstore.errors import EvaluationError
from skillstore.evaluation import stats
from skillstore.evaluation.stats import (
    holm,
    mcnemar_exact,
    one_sided,
    p_above,
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


def restricted_p_b(b, c, n, delta):
    """P(b-type pair) maximising the likelihood under p_c = p_b + delta, as the zero of the
    log-likelihood's derivative (decreasing: the log-likelihood is concave) found by bisection,
    independently of the closed-form root that stats uses."""
    m = n - b - c
    lo, hi = max(0.0, -delta), (1.0 - delta) / 2.0
    for _ in range(100):  # midpoints only: the derivative is infinite at the ends
        p = (lo + hi) / 2.0
        slope = ((b / p if b else 0.0) + (c / (p + delta) if c else 0.0)
                 - (2.0 * m / (1.0 - 2.0 * p - delta) if m else 0.0))
        lo, hi = (p, hi) if slope > 0.0 else (lo, p)
    return (lo + hi) / 2.0


def score_z(b, c, n, delta):
    """Tango's score statistic (d - delta) / sqrt((2 p_b + delta - delta^2) / n)."""
    d = (c - b) / n
    variance = (2.0 * restricted_p_b(b, c, n, delta) + delta - delta * delta) / n
    return (d - delta) / math.sqrt(variance)


def z_of(confidence):
    """The normal quantile behind a two-sided interval at `confidence`."""
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


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

def test_mcnemar_b1_c8_exact_p_and_tango_score_interval():
    before, after = pairs(both_right=6, lost=1, gained=8, both_wrong=5)
    t = mcnemar_exact(before, after)
    # 2 * P(X <= 1 | 9, 0.5) = 2 * (1 + 9) / 512
    assert t.p_value == pytest.approx(0.0390625, abs=1e-12)
    assert (t.n, t.b, t.c, t.test) == (20, 1, 8, "mcnemar-exact")
    assert t.difference == pytest.approx(7 / 20)
    assert (t.before, t.after) == (pytest.approx(7 / 20), pytest.approx(14 / 20))
    # Tango's ends, solved at 40 digits (restricted MLE by golden section on the likelihood)
    assert t.low == pytest.approx(0.0659901033, abs=1e-9)
    assert t.high == pytest.approx(0.5845318873, abs=1e-9)
    # and each end solves the score equation Z = +-z
    assert score_z(1, 8, 20, t.low) == pytest.approx(z_of(0.95), abs=1e-7)
    assert score_z(1, 8, 20, t.high) == pytest.approx(-z_of(0.95), abs=1e-7)
    # the unrestricted standard error at the estimate: sqrt(9 - 49/20) / 20
    assert t.se == pytest.approx(math.sqrt(9 - 49 / 20) / 20)


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


@pytest.mark.parametrize("n", [4, 100, 200, 792])
@pytest.mark.parametrize("confidence", [0.90, 0.95])
def test_no_discordant_pair_bounds_the_difference_at_z2_over_n_plus_z2(n, confidence):
    """b = c = 0: for delta > 0 the restricted p_b is 0, so Z^2 = n delta / (1 - delta), which
    reaches z^2 at delta = z^2 / (n + z^2) (the Wilson bound of 0/n); the same on the left."""
    t = mcnemar_exact(*pairs(both_right=n // 2, both_wrong=n - n // 2), confidence)
    bound = z_of(confidence) ** 2 / (n + z_of(confidence) ** 2)
    assert t.high == pytest.approx(bound, abs=1e-12)
    assert t.low == pytest.approx(-bound, abs=1e-12)
    assert t.se == 0.0


def test_mcnemar_every_prompt_flipped_is_not_zero_width():
    """b = 0, c = n: p_b = (1 - delta) / 2, so Z^2 = n (1 - delta) / (1 + delta) and the lower
    end is (n - z^2) / (n + z^2)."""
    t = mcnemar_exact(*pairs(gained=5))
    assert t.difference == 1.0 and t.high == 1.0
    z2 = z_of(0.95) ** 2
    assert t.low == pytest.approx((5 - z2) / (5 + z2), abs=1e-12)  # 0.131


def test_gains_only_give_the_wilson_interval_of_c_over_n():
    """b = 0, c = 6, n = 100: where the restricted p_b is 0 (B <= 0), Z^2 = n (d - delta)^2 /
    (delta (1 - delta)), so both ends are the roots of (n + z^2) delta^2 - (2c + z^2) delta
    + c^2 / n = 0."""
    n, c, z2 = 100, 6, z_of(0.90) ** 2
    qa, qb, qc = n + z2, -(2 * c + z2), c * c / n
    root = math.sqrt(qb * qb - 4 * qa * qc)
    low, high = (-qb - root) / (2 * qa), (-qb + root) / (2 * qa)
    for delta in (low, high):  # B = c (1 - delta) - 2 (n - c) delta <= 0 there
        assert c * (1 - delta) - 2 * (n - c) * delta <= 0.0
    t = mcnemar_exact(*pairs(gained=c, both_wrong=n - c), 0.90)
    assert t.low == pytest.approx(low, abs=1e-12) and t.high == pytest.approx(high, abs=1e-12)
    assert (t.low, t.high) == (pytest.approx(0.0313406, abs=1e-7),
                               pytest.approx(0.1118410, abs=1e-7))


@pytest.mark.parametrize("lost,n,confidence", [(5, 100, 0.90), (2, 100, 0.95), (3, 20, 0.95)])
def test_losses_only_interval_is_the_set_where_the_score_is_within_z(lost, n, confidence):
    """b > 0, c = 0, where a Wald-type interval under-covers: brute force over a grid of delta,
    then a grid 1e-6 fine across the coarse cell that holds each end."""
    z = z_of(confidence)
    t = mcnemar_exact(*pairs(both_right=n - lost - 10, lost=lost, both_wrong=10), confidence)

    def inside(delta):
        return -1.0 < delta < 1.0 and abs(score_z(lost, 0, n, delta)) <= z

    coarse = [i / 1000 - 1.0 for i in range(1, 2000)]
    kept = [k for k, delta in enumerate(coarse) if inside(delta)]
    assert kept == list(range(kept[0], kept[-1] + 1))  # one interval, no holes
    first, last = coarse[kept[0]], coarse[kept[-1]]
    low = min(e for e in (first - 1e-3 + i * 1e-6 for i in range(1001)) if inside(e))
    high = max(e for e in (last + i * 1e-6 for i in range(1001)) if inside(e))
    assert t.low == pytest.approx(low, abs=1.01e-6) and t.high == pytest.approx(high, abs=1.01e-6)
    assert t.low < t.difference < t.high < 0.1


@pytest.mark.parametrize("cells", [(6, 1, 8, 5), (85, 5, 0, 10), (40, 0, 0, 10), (2, 3, 3, 2),
                                   (0, 0, 5, 0), (64, 16, 5, 15)])
def test_swapping_before_and_after_negates_the_interval(cells):
    before, after = pairs(*cells)
    forward, backward = mcnemar_exact(before, after), mcnemar_exact(after, before)
    assert backward.low == pytest.approx(-forward.high, abs=1e-12)
    assert backward.high == pytest.approx(-forward.low, abs=1e-12)
    assert backward.difference == -forward.difference
    assert (backward.b, backward.c) == (forward.c, forward.b)
    assert backward.p_value == forward.p_value


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
    # Tango's lower end at z = 1.644854, solved at 40 digits, and Z there is z
    assert one.low == pytest.approx(0.1189301719, abs=1e-9)
    assert score_z(1, 8, 20, one.low) == pytest.approx(1.644854, abs=1e-6)


@pytest.mark.parametrize("cells", [(6, 1, 8, 5), (85, 5, 0, 10), (100, 0, 0, 100),
                                   (64, 16, 5, 15), (0, 0, 6, 94), (8, 7, 7, 8), (0, 0, 5, 0)])
@pytest.mark.parametrize("confidence", [0.90, 0.95, 0.99])
def test_p_above_is_at_most_alpha_exactly_when_the_lower_bound_reaches_the_threshold(cells,
                                                                                       confidence):
    before, after = pairs(*cells)
    low = mcnemar_exact(before, after, one_sided(confidence)).low
    thresholds = [i / 100 - 1.0 for i in range(201)] + [low - 1e-7, low + 1e-7]
    for threshold in thresholds:
        if abs(threshold - low) < 1e-9:
            continue
        p = p_above(before, after, threshold)
        assert (p <= 1.0 - confidence) == (low >= threshold), (threshold, low, p)


def test_p_above_for_binary_scores_is_the_score_test_tail():
    # b = c = 0, threshold -0.02: p_b = 0.02, so Z = 0.02 / sqrt(0.02 * 0.98 / n) at n = 200
    before, after = pairs(both_right=160, both_wrong=40)
    expected = 1.0 - NormalDist().cdf(0.02 / math.sqrt(0.02 * 0.98 / 200))
    assert p_above(before, after, -0.02) == pytest.approx(expected, abs=1e-12)
    # independent restricted MLE for a table with every kind of pair
    before, after = pairs(6, 1, 8, 5)
    expected = 1.0 - NormalDist().cdf(score_z(1, 8, 20, 0.05))
    assert p_above(before, after, 0.05) == pytest.approx(expected, abs=1e-9)
    assert p_above(before, after, 7 / 20) == pytest.approx(0.5)
    assert p_above(before, after, -1.5) == 0.0 and p_above(before, after, 1.5) == 1.0


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


# --- the continuity-corrected interval (the gate's learned check) ----------------------------

def _table(b: int, c: int, n: int) -> tuple[list[int], list[int]]:
    both_right = (n - b - c) // 2
    before = [1] * both_right + [1] * b + [0] * c + [0] * (n - both_right - b - c)
    after = [1] * both_right + [0] * b + [1] * c + [0] * (n - both_right - b - c)
    return before, after


@pytest.mark.parametrize(("b", "c", "n"), [(0, 6, 100), (3, 12, 100), (5, 0, 50), (0, 0, 80),
                                            (40, 45, 200)])
def test_the_corrected_interval_contains_the_uncorrected_one(b, c, n):
    before, after = _table(b, c, n)
    plain = mcnemar_exact(before, after, confidence=0.9)
    cc = mcnemar_exact(before, after, confidence=0.9, corrected=True)
    assert cc.test == "mcnemar-exact-cc" and cc.difference == plain.difference
    assert cc.low < plain.low and cc.high > plain.high  # each end moves out
    assert cc.p_value == plain.p_value  # the exact McNemar p is the same test


def test_from_nothing_the_corrected_bound_needs_ten_of_a_hundred_for_a_five_point_gain():
    """Uncorrected, 9 right of 100 from nothing already passes min_gain 0.05 at one-sided 95%,
    and P(Binomial(100, 0.05) >= 9) = 6.3% > 5%: the corrected bound needs 10 (2.8%)."""
    low = {c: mcnemar_exact(*_table(0, c, 100), confidence=one_sided(0.95), corrected=True).low
           for c in (9, 10)}
    plain = mcnemar_exact(*_table(0, 9, 100), confidence=one_sided(0.95)).low
    assert plain >= 0.05 > low[9] and low[10] >= 0.05
    tail = sum(math.comb(100, k) * 0.05**k * 0.95 ** (100 - k) for k in range(10, 101))
    assert tail == pytest.approx(0.0282, abs=1e-4)


@pytest.mark.parametrize(("b", "c", "n"), [(0, 9, 100), (4, 20, 120), (10, 3, 90)])
def test_corrected_p_above_inverts_the_corrected_interval(b, c, n):
    before, after = _table(b, c, n)
    for threshold in [t / 100 for t in range(-20, 25)]:
        for confidence in (0.9, 0.95, 0.99):
            low = mcnemar_exact(before, after, confidence=one_sided(confidence),
                                corrected=True).low
            p = p_above(before, after, threshold, corrected=True)
            if abs(low - threshold) > 1e-9:
                assert (p <= 1 - confidence) == (low >= threshold), (threshold, confidence)
