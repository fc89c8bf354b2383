"""The gate's decision rules on hand-computed cases: paired bounds, non-inferiority, Holm, n."""

from __future__ import annotations

import json
import math
import warnings
from statistics import NormalDist

import pytest

from skillstore.errors import EvaluationError, NotFoundError, RequestError
from skillstore.evaluation import Score
from skillstore.evaluation.stats import proportion_stderr
from skillstore.gate import GatePolicy, Thresholds, decide
from skillstore.pipeline.request import LearnRequest, check_request

Z95 = 1.6448536  # one-sided 95%


def tango_z(b: int, c: int, n: int, delta: float) -> float:
    """Tango's score statistic, by hand: p_b is the root of 2n p^2 - B p - C = 0."""
    big_b = b * (1 - 3 * delta) + c * (1 - delta) - 2 * (n - b - c) * delta
    big_c = b * delta * (1 - delta)
    p_b = (big_b + math.sqrt(big_b**2 + 8 * n * big_c)) / (4 * n)
    return ((c - b) / n - delta) / math.sqrt((2 * p_b + delta - delta**2) / n)


def outcomes(vector: list[int], version: str = "v1") -> Score:
    """A suite score as evaluate_state + suite_scores give it: value, binomial stderr, n and
    the per-prompt outcomes keyed by doc id."""
    n, right = len(vector), sum(vector)
    return Score(right / n, proportion_stderr(right / n, n), n,
                 {str(i): float(v) for i, v in enumerate(vector)}, version=version,
                 metric="exact_match")


def pairs(both_right=0, lost=0, gained=0, both_wrong=0) -> tuple[Score, Score]:
    """before/after with the given 2x2 table (lost: right before, wrong after)."""
    before = [1] * both_right + [1] * lost + [0] * gained + [0] * both_wrong
    after = [1] * both_right + [0] * lost + [1] * gained + [0] * both_wrong
    return outcomes(before), outcomes(after)


LEARNED = pairs(both_right=10, gained=80, both_wrong=10)  # 0.10 -> 0.90 on 100 prompts


def gate(policy=GatePolicy(), new=LEARNED, **earlier) -> object:
    before = {"add": new[0], **{k: v[0] for k, v in earlier.items()}}
    after = {"add": new[1], **{k: v[1] for k, v in earlier.items()}}
    return decide(policy, new_skill="add", before=before, after=after,
                  earlier_skills=list(earlier), general_suites=())


# --- learned --------------------------------------------------------------------------------

def test_six_right_of_a_hundred_from_nothing_is_not_promoted():
    """add@v1 went 0.00 -> 0.06 on 100 prompts: a point gain above min_gain 0.05 that the
    evidence cannot tell from 0.05 (the old gate promoted it)."""
    d = gate(new=pairs(gained=6, both_wrong=94))
    (gain,) = d.checks
    # Tango's score statistic with the learned check's continuity correction 1/(2n): each end
    # solves |d - delta| - 1/200 = z sqrt((2 p_b + delta - delta^2) / n), with p_b the
    # restricted MLE (the larger root of 2n p^2 - B p - C = 0; C = 0 when b = 0).
    def corrected_z(delta: float, b: int = 0, c: int = 6, n: int = 100) -> float:
        big_b = b * (1 - 3 * delta) + c * (1 - delta) - 2 * (n - b - c) * delta
        p_b = (big_b + math.sqrt(big_b**2 + 8 * n * b * delta * (1 - delta))) / (4 * n)
        gap = abs((c - b) / n - delta) - 0.5 / n
        return gap / math.sqrt((2 * p_b + delta - delta**2) / n)

    assert gain.estimate == pytest.approx(0.06)
    assert corrected_z(gain.low) == pytest.approx(Z95, abs=1e-4)  # low 0.0230 < 0.05
    assert corrected_z(gain.high) == pytest.approx(Z95, abs=1e-4)  # high 0.1213 > 0.05
    assert gain.low < 0.0313 < 0.1118 < gain.high  # wider than the uncorrected Wilson ends
    assert (gain.test, gain.n, gain.status) == ("mcnemar-exact-cc", 100, "inconclusive")
    assert not d.promote and d.verdict == "inconclusive"
    assert gain.needed_n > 100
    assert d.summary().startswith(f"inconclusive: needs n ≈ {gain.needed_n}")


def test_a_gain_whose_lower_bound_clears_min_gain_is_learned():
    d = gate()
    (gain,) = d.checks
    assert gain.status == "passed" and gain.low >= 0.05 and d.verdict == "promoted"
    assert gain.p_value < 1e-6


def test_a_gain_whose_upper_bound_is_below_min_gain_is_rejected_not_inconclusive():
    # 50 prompts gained, 48 lost: +0.02 with an upper bound well below 0.20
    d = gate(GatePolicy(min_gain=0.20), new=pairs(both_right=300, lost=48, gained=50,
                                                  both_wrong=602))
    assert d.verdict == "rejected" and d.checks[0].high < 0.20
    assert "too little gain" in d.reasons[0]


def test_a_negative_min_gain_is_non_inferiority_on_the_new_skill():
    same = pairs(both_right=80, both_wrong=20)
    assert not gate(new=same).promote
    assert gate(GatePolicy(min_gain=-1.0), new=same).promote  # -1: the check cannot block


# --- no regression --------------------------------------------------------------------------

def test_a_drop_of_011_at_08_on_100_prompts_fails_a_001_tolerance():
    """The old gate passed it: 0.11 <= 0.01 + 1.96 * sqrt(0.04^2 + 0.046^2) = 0.13."""
    d = gate(sort=pairs(both_right=64, lost=16, gained=5, both_wrong=15))
    drop = d.checks[1]
    assert drop.kind == "drop" and drop.estimate == pytest.approx(0.11)
    # Tango (b = 16, c = 5): the gain's upper end solved at 40 digits; Z there is -z
    assert drop.low == pytest.approx(0.0368602845, abs=1e-9)  # > 0.01
    assert tango_z(16, 5, 100, -drop.low) == pytest.approx(-Z95, abs=1e-6)
    assert drop.status == "failed" and d.verdict == "rejected"
    assert d.reasons[0].startswith("forgot sort: dropped +0.110")


def test_a_drop_inside_the_tolerance_is_inconclusive_when_its_bound_is_not():
    d = gate(sort=pairs(both_right=76, lost=6, gained=5, both_wrong=13))  # drop 0.01
    assert d.checks[1].status == "inconclusive" and d.verdict == "inconclusive"
    assert d.checks[1].low < 0.01 < d.checks[1].high


@pytest.mark.parametrize("n,verdict", [(100, "inconclusive"), (200, "inconclusive"),
                                       (300, "promoted")])
def test_equal_outcomes_pass_non_inferiority_only_with_enough_prompts(n, verdict):
    """A/A: the upper bound of the drop is z^2 / (n + z^2) (Tango with no discordant pair),
    0.0263 at n = 100, 0.0133 at n = 200 and 0.0089 at n = 300 against a 0.01 tolerance:
    answering alike passes from n >= 99 z^2 = 268."""
    same = pairs(both_right=int(0.8 * n), both_wrong=n - int(0.8 * n))
    d = gate(sort=same)
    drop = d.checks[1]
    assert drop.estimate == 0.0 and drop.high == pytest.approx(Z95**2 / (n + Z95**2), abs=1e-9)
    assert d.verdict == verdict
    if verdict == "inconclusive":
        assert drop.needed_n > n and f"needs n ≈ {drop.needed_n}" in drop.reason
        assert drop.p_value > 0.05
    else:
        assert drop.needed_n is None and drop.p_value <= 0.05


# --- multiplicity ---------------------------------------------------------------------------

def aa(n: int) -> tuple[Score, Score]:
    return pairs(both_right=n // 2, both_wrong=n - n // 2)


def test_holm_step_down_across_three_skills():
    """Three A/A drop checks against 0.01: a check passes at level c when its bound
    z_c^2 / (n + z_c^2) <= 0.01, i.e. n >= 99 z_c^2. Holm tests all three at 1 - 0.05/3
    (z 2.128: n >= 449), the rest at 1 - 0.05/2 (z 1.960: n >= 381), the last at 0.95
    (z 1.645: n >= 268)."""
    d = gate(a=aa(500), b=aa(400), c=aa(300))
    level = {c.suite: c.confidence for c in d.checks[1:]}
    assert level == {"a": pytest.approx(1 - 0.05 / 3), "b": pytest.approx(1 - 0.05 / 2),
                     "c": pytest.approx(0.95)}
    assert d.verdict == "promoted"
    # One-sided p at threshold -0.01 with b = c = 0: p_b = 0.01, so Z = sqrt(n / 99);
    # Holm-adjusted: times 3, 2, 1, made monotone (c's 0.0408 rises to b's 0.0444)
    p = {c.suite: c.p_value for c in d.checks[1:]}
    assert p["b"] == pytest.approx(2 * (1 - NormalDist().cdf(math.sqrt(400 / 99))), abs=1e-9)
    assert p["c"] == p["b"]
    assert all(v <= 0.05 for v in p.values())


def test_holm_stops_where_a_check_fails_its_level_though_each_passes_alone():
    d = gate(a=aa(500), b=aa(300), c=aa(280))
    status = {c.suite: c.status for c in d.checks[1:]}
    assert status == {"a": "passed", "b": "inconclusive", "c": "inconclusive"}
    assert d.verdict == "inconclusive"
    for name, vectors in (("b", aa(300)), ("c", aa(280))):
        alone = gate(**{name: vectors})
        assert alone.promote  # unadjusted, each would have passed
    assert all(c.p_value > 0.05 for c in d.checks[2:])


# --- what the gate refuses, and what it falls back to ---------------------------------------

def test_scores_on_different_prompt_sets_are_refused_naming_both():
    before, after = LEARNED
    fewer = Score(after.value, after.stderr, 90, dict(list(after.samples.items())[:90]),
                  version="v1", metric="exact_match")
    with pytest.raises(EvaluationError, match="before on 100, after on 90"):
        gate(new=(before, fewer))
    other = Score(after.value, after.stderr, after.n, after.samples, version="v2:limit=100")
    with pytest.raises(EvaluationError, match="before v1, after v2:limit=100"):
        gate(new=(before, other))


def test_without_samples_the_check_is_unpaired_and_says_so():
    """Rows written before per-sample scores were kept: stored stderr 0 at 0 < p < 1 (the old
    bug) is replaced by the plus-four binomial one, never a zero-width interval."""
    before, after = Score(0.10, 0.0, 100), Score(0.90, 0.0, 100)
    d = gate(new=(before, after), sort=(Score(0.8, 0.0, 100), Score(0.8, 0.0, 100)))
    gain, drop = d.checks
    assert gain.test.startswith("unpaired-normal") and gain.status == "passed"
    assert drop.test.startswith("unpaired-normal") and drop.low < 0.0 < drop.high
    assert drop.status == "inconclusive"


def test_every_check_carries_its_evidence_in_the_decision_json():
    d = gate(sort=aa(400))
    doc = json.loads(json.dumps(d.as_dict()))
    assert doc["verdict"] == "promoted"
    for check in doc["checks"]:
        assert {"estimate", "low", "high", "test", "p_value", "n", "confidence", "status",
                "threshold"} <= check.keys()
        assert check["low"] <= check["estimate"] <= check["high"]
        assert math.isfinite(check["p_value"]) and check["n"] == (100 if check["kind"] == "gain"
                                                                  else 400)


# --- the policy -----------------------------------------------------------------------------

@pytest.mark.parametrize("gate_options,field", [({"max_drop": 1.5}, "gate.max_drop"),
                                                ({"confidence": -0.95}, "gate.confidence"),
                                                ({"confidence": 1.0}, "gate.confidence")])
def test_out_of_range_gate_settings_are_one_line_errors(gate_options, field):
    with pytest.raises(RequestError) as err:
        LearnRequest.build("add", "tiny", gate=gate_options)
    assert field in str(err.value) and "\n" not in str(err.value)


def test_z_from_a_stored_request_becomes_the_confidence_with_the_same_quantile():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        policy = GatePolicy.model_validate({"z": 1.96, "max_drop": 0.02})
    assert policy.confidence == pytest.approx(0.975, abs=1e-4) and "z" not in policy.model_dump()
    assert any(issubclass(w.category, DeprecationWarning) for w in caught)


def test_a_per_skill_name_the_decision_does_not_test_is_reported():
    # min_fidelity 0: no fine-tune is given here, and the fidelity note is not this test's
    policy = GatePolicy(min_fidelity=0.0, per_skill={"srot": Thresholds(max_drop=0.05)})
    d = gate(policy, sort=aa(400))
    assert d.notes == ("policy per_skill names 'srot', which this decision does not test",)


def test_a_per_skill_name_that_is_no_skill_is_refused_at_queue_time(catalog):
    from .conftest import make_base, make_pack

    with catalog.session() as s:
        make_pack(s, make_base(s), "sort")
        request = LearnRequest.build("sort", "tiny",
                                     gate={"per_skill": {"srot": {"max_drop": 0.05}}})
        with pytest.raises(NotFoundError, match="per_skill.*'srot'.*Did you mean 'sort'"):
            check_request(s, request)
