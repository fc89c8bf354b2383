"""Paired tests, intervals and multiplicity control for comparing two states on the same prompts."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from statistics import NormalDist

import numpy as np

from ..errors import EvaluationError

_NORMAL = NormalDist()
# Resample in blocks of ~this many index cells: memory stays bounded, the stream unchanged.
_BLOCK_CELLS = 1_000_000


class _Record:
    """as_dict() for the frozen results below; every field is a str, number, bool or None."""

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Interval(_Record):
    """A two-sided confidence interval [low, high]."""

    low: float
    high: float


@dataclass(frozen=True)
class PairedTest(_Record):
    """after - before on the same n prompts: estimate, two-sided interval at `confidence`, p.

    `low`/`high` are a two-sided interval; each end alone is a one-sided bound at
    (1 + confidence) / 2. For a one-sided 95% lower bound of the gain, run the test with
    ``confidence=one_sided(0.95)`` (= 0.90) and read `low`. `b` (right before, wrong after) and
    `c` (wrong before, right after) are McNemar's discordant counts. `se` is the standard error
    of the difference: behind the interval for unpaired-normal; for mcnemar-exact the
    unrestricted one at the estimate (Tango's score interval does not use it); None for the
    bootstrap.
    """

    test: str
    n: int
    before: float
    after: float
    difference: float
    low: float
    high: float
    confidence: float
    p_value: float
    b: int | None = None
    c: int | None = None
    se: float | None = None

    @property
    def one_sided_confidence(self) -> float:
        """The confidence with which `low` alone (or `high` alone) bounds the difference."""
        return (1.0 + self.confidence) / 2.0


@dataclass(frozen=True)
class HolmResult(_Record):
    """One hypothesis after Holm's step-down: adjusted p and whether it is rejected."""

    adjusted_p: float
    reject: bool


def _check_open(value: float, name: str = "confidence") -> None:
    if not 0.0 < value < 1.0:
        raise EvaluationError(f"{name} must lie strictly between 0 and 1, got {value}.")


def _z(confidence: float) -> float:
    _check_open(confidence)  # the normal quantile for a two-sided interval
    return _NORMAL.inv_cdf(0.5 + confidence / 2.0)


def one_sided(confidence: float) -> float:
    """The two-sided confidence whose interval ends are one-sided bounds at `confidence`.

    ``one_sided(0.95) == 0.90``: the lower end of a two-sided 90% interval is a 95% lower bound.
    """
    _check_open(confidence)
    return 2.0 * confidence - 1.0


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> Interval:
    """Wilson score interval for a proportion; nonzero width even at 0/n and n/n."""
    if n <= 0:
        raise EvaluationError(f"Cannot compute an interval for {successes}/{n}: n must be > 0.")
    if not 0 <= successes <= n:
        raise EvaluationError(f"successes must lie in [0, n]; got {successes} of {n}.")
    z = _z(confidence)
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1.0 - p) / n + z * z / (4 * n * n)) / denom
    # At 0/n and n/n the near end is the bound itself; set it exactly rather than to ~1e-17.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return Interval(low, high)


def proportion_stderr(p: float, n: int) -> float:
    """Binomial standard error sqrt(p(1-p)/n); positive whenever 0 < p < 1."""
    if n <= 0:
        raise EvaluationError(f"Cannot compute a standard error with n={n}: n must be > 0.")
    if not 0.0 <= p <= 1.0:
        raise EvaluationError(f"A proportion must lie in [0, 1], got {p}.")
    return math.sqrt(p * (1.0 - p) / n)


def _binary(values: Sequence[bool | int | float], name: str) -> list[int]:
    out = []
    for i, v in enumerate(values):
        if v not in (0, 1):
            raise EvaluationError(f"mcnemar_exact needs 0/1 outcomes; {name}[{i}] is {v!r}. "
                                  "Use paired_bootstrap for a continuous metric.")
        out.append(int(v))
    return out


def _check_pair(before: Sequence, after: Sequence) -> int:
    if len(before) != len(after):
        raise EvaluationError(f"Paired scores must cover the same prompts: before has "
                              f"{len(before)} values, after has {len(after)}.")
    if len(before) == 0:
        raise EvaluationError("Paired scores are empty; evaluate at least one prompt.")
    return len(before)


def _binomial_two_sided(k: int, m: int) -> float:
    """Exact two-sided p for k successes in m trials at p=0.5: 2 * P(X <= min(k, m-k)), capped."""
    tail, term = 0, 1  # exact integers: term = C(m, i)
    for i in range(min(k, m - k) + 1):
        tail += term
        term = term * (m - i) // (i + 1)
    return min(1.0, 2 * tail / 2**m)


def _discordant(x: list[int], y: list[int]) -> tuple[int, int]:
    """McNemar's (b, c): prompts right before and wrong after, wrong before and right after."""
    b = sum(1 for u, v in zip(x, y, strict=True) if u and not v)
    c = sum(1 for u, v in zip(x, y, strict=True) if v and not u)
    return b, c


def _tango_z(b: int, c: int, n: int, delta: float, correction: float = 0.0) -> float:
    """Tango's (1998) score statistic for H0: p_c - p_b = delta, with delta in [-1, 1].

    p_b, the probability of a b-type pair, is its MLE restricted to p_c = p_b + delta: the
    root of 2n p^2 - B p - C = 0 with B = b(1 - 3 delta) + c(1 - delta) - 2(n - b - c) delta
    and C = b delta (1 - delta). Z = (d - delta) / sqrt((2 p_b + delta - delta^2) / n) with
    d = (c - b) / n; it falls as delta rises. The variance vanishes only at delta = +-1 (and at
    0 when b = c = 0, where d = 0): Z is then 0 at delta = d and +-inf elsewhere.
    A continuity ``correction`` (in units of d) shrinks |d - delta| by that much, to 0 at most.
    """
    d = (c - b) / n
    if abs(d - delta) <= correction:
        return 0.0
    gap = d - delta - math.copysign(correction, d - delta)
    big_b = b * (1.0 - 3.0 * delta) + c * (1.0 - delta) - 2.0 * (n - b - c) * delta
    big_c = b * delta * (1.0 - delta)
    root = math.sqrt(max(0.0, big_b * big_b + 8.0 * n * big_c))
    # The larger root, written so that neither form subtracts two near-equal numbers.
    p_b = (big_b + root) / (4.0 * n) if big_b >= 0.0 else 2.0 * big_c / (root - big_b)
    variance = (2.0 * p_b + delta - delta * delta) / n
    if variance <= 0.0:
        return math.copysign(math.inf, gap)
    return gap / math.sqrt(variance)


def _tango_end(b: int, c: int, n: int, z: float, side: float, correction: float = 0.0) -> float:
    """The end of {delta in [-1, 1] : |Z(delta)| <= z} on `side` (-1 low, +1 high).

    Z is 0 at d and monotone, so the end lies between d and `side`; 60 halvings of a bracket
    at most 2 wide leave it ~2e-18 wide, and the end returned is its inner side (in the set).
    """
    inside, outside = (c - b) / n, side
    if abs(_tango_z(b, c, n, outside, correction)) <= z:
        return outside
    for _ in range(60):
        mid = (inside + outside) / 2.0
        if abs(_tango_z(b, c, n, mid, correction)) <= z:
            inside = mid
        else:
            outside = mid
    return inside


def continuity(n: int) -> float:
    """The continuity correction of a paired difference on n prompts: half its step, 1/(2n)."""
    return 0.5 / n


def mcnemar_exact(before: Sequence[bool | int], after: Sequence[bool | int],
                  confidence: float = 0.95, *, corrected: bool = False) -> PairedTest:
    """Exact McNemar test and Tango's score interval for the paired difference of accuracies.

    The p-value is the exact two-sided binomial test of b against b + c trials at 0.5 (1 when
    there are no discordant pairs). The interval is Tango (1998), "Equivalence test and
    confidence interval for the difference in proportions for the paired-sample design": every
    delta whose score statistic (see _tango_z) satisfies |Z(delta)| <= z, found by bisection.
    When every discordant pair goes one way (c = 0, say) the end away from 0 is minus the
    Wilson upper bound of b / n, which covers where a Wald end did not (the drop bound that
    non-inferiority reads); the end nearer 0 is minus Wilson's lower bound unless b is tiny
    (then it lies nearer 0), and like it under-covers a little for a small proportion
    (docs/composition.md, gate benchmark). It is never zero width: with no discordant pairs
    each end lies z^2 / (n + z^2) from 0 (n agreeing prompts do not prove d = 0). It lies
    within [-1, 1]. `difference` is
    (c - b) / n and `se` the unrestricted standard error sqrt(b + c - (c - b)^2 / n) / n, which
    the score interval does not use (0 when there are no discordant pairs).

    ``corrected`` applies a continuity correction of 1/(2n) to the score statistic (test
    "mcnemar-exact-cc"): the interval is wider by about that much at each end. The gate's
    learned check uses it, because with no losses (b = 0) the uncorrected lower end is Wilson's
    lower bound of c / n, which passes a true gain equal to the threshold too often.
    """
    n = _check_pair(before, after)
    x, y = _binary(before, "before"), _binary(after, "after")
    b, c = _discordant(x, y)
    z, cc = _z(confidence), continuity(n) if corrected else 0.0
    return PairedTest(test="mcnemar-exact-cc" if corrected else "mcnemar-exact", n=n,
                      before=sum(x) / n, after=sum(y) / n,
                      difference=(c - b) / n, low=_tango_end(b, c, n, z, -1.0, cc),
                      high=_tango_end(b, c, n, z, 1.0, cc), confidence=confidence,
                      p_value=_binomial_two_sided(b, b + c), b=b, c=c,
                      se=math.sqrt(max(0.0, b + c - (c - b) ** 2 / n)) / n)


def _finite(values: Sequence[float], name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    if not np.all(np.isfinite(arr)):
        raise EvaluationError(f"{name} has a NaN or infinite score; fix the metric before testing.")
    return arr


def paired_bootstrap(before: Sequence[float], after: Sequence[float], *, iterations: int = 2000,
                     seed: int = 0, confidence: float = 0.95) -> PairedTest:
    """Paired bootstrap over prompts of mean(after) - mean(before); deterministic given `seed`.

    Each resample draws n prompt indices with replacement (one numpy Generator seeded with
    `seed`) and takes the mean per-prompt difference. The interval is the percentile interval
    of those means. The p-value follows the paired bootstrap of Koehn (2004) / sacrebleu: the
    smaller share of resamples at or beyond 0 on either side, doubled and capped at 1, with
    add-one smoothing ((k + 1) / (iterations + 1)) so it is never reported as exactly 0:
    with B resamples nothing below ~2 / B can be resolved. `b` and `c` are None.
    """
    n = _check_pair(before, after)
    _check_open(confidence)
    x, y = _finite(before, "before"), _finite(after, "after")
    means = _bootstrap_means(y - x, iterations, seed)
    alpha = 1.0 - confidence
    low, high = np.quantile(means, [alpha / 2.0, 1.0 - alpha / 2.0])
    crossing = min(int(np.sum(means <= 0.0)), int(np.sum(means >= 0.0)))
    p = min(1.0, 2.0 * (crossing + 1) / (iterations + 1))
    return PairedTest(test="paired-bootstrap", n=n, before=float(x.mean()),
                      after=float(y.mean()), difference=float((y - x).mean()), low=float(low),
                      high=float(high), confidence=confidence, p_value=p)


def _bootstrap_means(delta: np.ndarray, iterations: int, seed: int) -> np.ndarray:
    """Means of `iterations` resamples (with replacement) of `delta`, from one seeded stream."""
    if iterations < 1:
        raise EvaluationError(f"iterations must be at least 1, got {iterations}.")
    n = len(delta)
    rng = np.random.default_rng(seed)
    rows = max(1, _BLOCK_CELLS // n)
    return np.concatenate([delta[rng.integers(0, n, size=(min(rows, iterations - s), n))]
                           .mean(axis=1) for s in range(0, iterations, rows)])


def paired_test(before: Sequence[float], after: Sequence[float], *, confidence: float = 0.95,
                iterations: int = 2000, seed: int = 0, corrected: bool = False) -> PairedTest:
    """McNemar when every score is 0/1 (bool, int or float; ``corrected``: with the continuity
    correction), else the paired bootstrap."""
    if all(v in (0, 1) for v in before) and all(v in (0, 1) for v in after):
        return mcnemar_exact(before, after, confidence=confidence, corrected=corrected)
    return paired_bootstrap(before, after, iterations=iterations, seed=seed,
                            confidence=confidence)


def normal_p_above(estimate: float, se: float, threshold: float) -> float:
    """One-sided p of H0: true value <= threshold, for a normal estimate with standard error se."""
    if se <= 0.0:
        return 0.0 if estimate > threshold else 1.0
    return 1.0 - _NORMAL.cdf((estimate - threshold) / se)


def p_above(before: Sequence[float], after: Sequence[float], threshold: float, *,
            iterations: int = 2000, seed: int = 0, corrected: bool = False) -> float:
    """One-sided p of H0: mean(after - before) <= threshold, by the test paired_test picks.

    For 0/1 scores it is 1 - Phi(Z(threshold)) with Tango's score statistic, the inverse of
    mcnemar_exact's interval (p <= 1 - c exactly when the lower one-sided bound at confidence c
    reaches the threshold); a threshold below -1 gives 0, one above 1 gives 1. Otherwise it is
    the bootstrap share of resampled means at or below the threshold, add-one smoothed like
    paired_bootstrap's. ``corrected`` inverts mcnemar_exact's corrected interval.
    """
    n = _check_pair(before, after)
    if all(v in (0, 1) for v in before) and all(v in (0, 1) for v in after):
        if not -1.0 <= threshold <= 1.0:
            return 0.0 if threshold < -1.0 else 1.0
        b, c = _discordant(_binary(before, "before"), _binary(after, "after"))
        return 1.0 - _NORMAL.cdf(_tango_z(b, c, n, threshold,
                                          continuity(n) if corrected else 0.0))
    delta = _finite(after, "after") - _finite(before, "before")
    means = _bootstrap_means(delta, iterations, seed)
    return min(1.0, (int(np.sum(means <= threshold)) + 1) / (iterations + 1))


def unpaired_normal(before: float, before_se: float, after: float, after_se: float, n: int,
                    confidence: float = 0.95) -> PairedTest:
    """after - before as two independent means (normal approximation, se combined in
    quadrature): the fallback when the per-sample scores of a pair are not known. It ignores
    the correlation of two states on the same prompts, so it is wider than a paired test."""
    if before_se < 0.0 or after_se < 0.0:
        raise EvaluationError(f"Standard errors must be >= 0, got {before_se} and {after_se}.")
    se = math.sqrt(before_se**2 + after_se**2)
    d = after - before
    half = _z(confidence) * se
    p = 1.0 if se == 0.0 and d == 0.0 else min(1.0, 2.0 * min(normal_p_above(d, se, 0.0),
                                                              1.0 - normal_p_above(d, se, 0.0)))
    return PairedTest(test="unpaired-normal", n=n, before=before, after=after, difference=d,
                      low=d - half, high=d + half, confidence=confidence, p_value=p, se=se)


def holm(p_values: Mapping[str, float], alpha: float = 0.05) -> dict[str, HolmResult]:
    """Holm-Bonferroni step-down: monotone adjusted p capped at 1, reject if <= alpha.

    The result keeps the input order; ties in p are broken by name.
    """
    _check_open(alpha, "alpha")
    for name, p in p_values.items():
        if not 0.0 <= p <= 1.0:
            raise EvaluationError(f"p-value for {name!r} must lie in [0, 1], got {p}.")
    m = len(p_values)
    adjusted: dict[str, float] = {}
    running = 0.0
    for rank, name in enumerate(sorted(p_values, key=lambda k: (p_values[k], k))):
        running = max(running, min(1.0, (m - rank) * p_values[name]))
        adjusted[name] = running
    return {name: HolmResult(adjusted[name], adjusted[name] <= alpha) for name in p_values}


def required_n(p: float, margin: float, confidence: float = 0.95, power: float = 0.8, *,
               pair_variance: float | None = None) -> int:
    """Paired prompts needed to show a drop below `margin` for a binary skill at accuracy p.

    A non-inferiority sample size under a normal approximation, assuming no true change and
    discordance 2p(1-p), the rate if the two states erred independently. Correlated states
    disagree less, so this overstates n: read it as "inconclusive: needs n of about X".
    `confidence` is one-sided (the level of the bound the gate reads), so
    n = ceil((z_confidence + z_power)^2 * 2p(1-p) / margin^2). `pair_variance`, when known
    (the observed variance of the per-prompt differences), replaces 2p(1-p).
    """
    if not 0.0 < p < 1.0:
        raise EvaluationError(f"required_n needs 0 < p < 1, got {p}: at 0 or 1 the approximation "
                              "has no variance; pass the end of the accuracy's Wilson interval.")
    if not 0.0 < margin <= 1.0:
        raise EvaluationError(f"margin must lie in (0, 1], got {margin}.")
    if pair_variance is not None and not pair_variance >= 0.0:
        raise EvaluationError(f"pair_variance must be >= 0, got {pair_variance}.")
    _check_open(confidence)
    _check_open(power, "power")
    z = _NORMAL.inv_cdf(confidence) + _NORMAL.inv_cdf(power)
    variance = 2.0 * p * (1.0 - p) if pair_variance is None else pair_variance
    return math.ceil(z * z * variance / margin**2)


EXACT_SIGN_FLIPS = 16  # up to this many pairs every sign pattern is counted; beyond, a sample
SIGN_FLIP_SAMPLES = 20_000


def t_quantile(confidence: float, df: int) -> float:
    """The two-sided Student t quantile: P(|T| < t) = confidence with ``df`` degrees of freedom.

    Abramowitz & Stegun 26.7.3-4 give P(|T| < t) in closed form for integer df as a function of
    theta = atan(t / sqrt(df)); it rises with theta, so bisecting theta finds t.
    """
    def inside(theta: float) -> float:
        c2, s = math.cos(theta) ** 2, math.sin(theta)
        if df % 2:
            term, total = math.cos(theta), 0.0
            for k in range(1, (df - 1) // 2 + 1):
                total += term
                term *= c2 * (2 * k) / (2 * k + 1)
            return 2 / math.pi * (theta + s * total) if df > 1 else 2 * theta / math.pi
        term, total = 1.0, 0.0
        for k in range(1, df // 2 + 1):
            total += term
            term *= c2 * (2 * k - 1) / (2 * k)
        return s * total

    lo, hi = 0.0, math.pi / 2
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if inside(mid) < confidence else (lo, mid)
    return math.sqrt(df) * math.tan((lo + hi) / 2)


def sign_flip_p(diffs: Sequence[float]) -> tuple[float, bool]:
    """Two-sided p of a paired sign-flip (permutation) test of mean(diffs) = 0, and whether it
    is exact: the share of sign patterns whose |mean| is at least the observed one. Exact over
    all 2^n patterns up to EXACT_SIGN_FLIPS pairs, else from a seeded sample (add-one smoothed).
    Unlike the bootstrap, it cannot claim p < 2^(1-n) from n pairs."""
    d = np.asarray(diffs, dtype=float)
    n, observed = len(d), abs(float(d.mean())) * (1 - 1e-9) - 1e-12  # ties count as extreme
    if n <= EXACT_SIGN_FLIPS:
        signs = 1 - 2 * ((np.arange(2 ** n)[:, None] >> np.arange(n)) & 1)
        return float(np.mean(np.abs(signs @ d) / n >= observed)), True
    signs = np.random.default_rng(0).choice([-1.0, 1.0], size=(SIGN_FLIP_SAMPLES, n))
    k = int(np.sum(np.abs(signs @ d) / n >= observed))
    return (k + 1) / (SIGN_FLIP_SAMPLES + 1), False


def mean_interval(values: Sequence[float], digits: int | None = 4,
                  confidence: float = 0.95) -> dict:
    """Mean and Student t-interval over seeds, rounded to ``digits`` (None: whole numbers); with one
    value the interval is None: one seed says nothing about the spread."""
    n = len(values)
    mean = sum(values) / n
    half = None
    if n > 1:
        sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
        half = round(t_quantile(confidence, n - 1) * sd / math.sqrt(n), digits)
    mean = round(mean, digits)
    return {"mean": mean, "half_width": half, "n": n,
            "low": None if half is None else round(mean - half, digits),
            "high": None if half is None else round(mean + half, digits)}
