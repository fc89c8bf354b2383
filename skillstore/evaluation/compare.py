"""Two scores of one suite compared prompt by prompt, or by their stderrs when samples are lost."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field, replace

from ..errors import EvaluationError
from .scores import Score
from .stats import (
    PairedTest,
    normal_p_above,
    one_sided,
    p_above,
    paired_test,
    required_n,
    unpaired_normal,
    wilson_interval,
)

UNPAIRED = "unpaired-normal"


def _fallback_se(score: Score) -> float | None:
    """The stored stderr; when it is 0 or missing (rows written before per-sample scores were
    kept) the plus-four binomial one for a proportion with a known n, else None (unknown)."""
    if score.stderr and score.stderr > 0.0:
        return score.stderr
    if score.n > 0 and 0.0 <= score.value <= 1.0:
        p = (score.value * score.n + 2.0) / (score.n + 4.0)
        return math.sqrt(p * (1.0 - p) / (score.n + 4.0))
    return None


def aligned(suite: str, before: Score,
            after: Score) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The two states' per-sample scores matched by prompt (sorted by key); None when either
    side has none. Scores of different suite versions or prompt sets are refused."""
    if before.version and after.version and before.version != after.version:
        raise EvaluationError(
            f"Suite {suite!r} was evaluated on different versions: before {before.version}, "
            f"after {after.version}; evaluate both states on the same suite version and limit.")
    if before.samples is None or after.samples is None:
        return None
    if before.samples.keys() != after.samples.keys():
        only = len(before.samples.keys() ^ after.samples.keys())
        raise EvaluationError(
            f"Suite {suite!r} was evaluated on different prompts: before on "
            f"{len(before.samples)}, after on {len(after.samples)} ({only} not in both); "
            "evaluate both states on the same suite version and limit.")
    keys = sorted(before.samples)
    return (tuple(before.samples[k] for k in keys), tuple(after.samples[k] for k in keys))


@dataclass(frozen=True)
class Comparison:
    """after - before on one suite: the paired test when both sides kept their per-sample
    scores, else the unpaired normal approximation on the stored stderrs (``test`` says which).
    ``at(c)`` is the test whose ``low`` and ``high`` are each a one-sided bound at confidence c.
    """

    suite: str
    before: Score
    after: Score
    pairs: tuple[tuple[float, ...], tuple[float, ...]] | None
    iterations: int = 2000
    seed: int = 0
    corrected: bool = False
    _tests: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def of(cls, suite: str, before: Score, after: Score, *, iterations: int = 2000,
           seed: int = 0, corrected: bool = False) -> Comparison:
        """``corrected``: the paired 0/1 test with its continuity correction (stats)."""
        return cls(suite, before, after, aligned(suite, before, after), iterations, seed,
                   corrected)

    @property
    def n(self) -> int:
        return len(self.pairs[0]) if self.pairs else min(self.before.n, self.after.n)

    @property
    def proportions(self) -> bool:
        """Both sides are proportions, so the difference lies in [-1, 1]."""
        return self.before.binary and self.after.binary

    @property
    def test(self) -> str:
        if self.pairs is not None:
            return self.at(0.95).test
        missing = [s for s, sc in (("before", self.before), ("after", self.after))
                   if sc.samples is None]
        return f"{UNPAIRED} (no per-sample scores {' or '.join(missing)})"

    def at(self, confidence: float) -> PairedTest:
        """The test with each end of [low, high] a one-sided bound at ``confidence``."""
        if confidence not in self._tests:
            self._tests[confidence] = self._run(confidence)
        return self._tests[confidence]

    def _run(self, confidence: float) -> PairedTest:
        two_sided = one_sided(confidence)
        if self.pairs is not None:
            return paired_test(*self.pairs, confidence=two_sided, iterations=self.iterations,
                               seed=self.seed, corrected=self.corrected)
        b, a = self.before, self.after
        se_b, se_a = _fallback_se(b), _fallback_se(a)
        if se_b is None or se_a is None:  # no n and no stderr: nothing bounds the difference
            lo, hi = (-1.0, 1.0) if self.proportions else (-math.inf, math.inf)
            return PairedTest(self.test, self.n, b.value, a.value, a.value - b.value, lo, hi,
                              two_sided, 1.0, se=math.inf)
        t = unpaired_normal(b.value, se_b, a.value, se_a, self.n, two_sided)
        low, high = (max(-1.0, t.low), min(1.0, t.high)) if self.proportions else (t.low, t.high)
        return replace(t, test=self.test, low=low, high=high)

    def p_above(self, threshold: float) -> float:
        """One-sided p of H0: after - before <= threshold (against: it is above)."""
        if self.pairs is not None:
            return p_above(*self.pairs, threshold, iterations=self.iterations, seed=self.seed,
                           corrected=self.corrected)
        t = self.at(0.95)
        return normal_p_above(t.difference, t.se, threshold)

    def needed_n(self, gap: float, half: float, confidence: float, power: float) -> int | None:
        """About how many prompts would decide a check whose estimate lies ``gap`` from its
        threshold, with the bound now ``half`` from the estimate: the largest of
        stats.required_n (with the observed variance of the per-prompt differences when the
        comparison is paired, else 2p(1-p) at the two states' mean accuracy), the n at which
        the observed half-width would shrink to the gap, and n + 1. None when the estimate
        sits on the threshold (no n decides it)."""
        n = self.n
        if gap <= 0.0 or n <= 0:
            return None
        p = min(1.0, max(0.0, (self.before.value + self.after.value) / 2.0))
        if p <= 0.0:
            p = wilson_interval(0, n, confidence).high
        elif p >= 1.0:
            p = wilson_interval(n, n, confidence).low
        variance = None
        if self.pairs is not None and n > 1:
            variance = statistics.variance(a - b for b, a in zip(*self.pairs, strict=True))
        by_power = required_n(p, min(gap, 1.0), confidence, power, pair_variance=variance)
        by_width = math.ceil(n * (half / gap) ** 2) if math.isfinite(half) else by_power
        return max(by_power, by_width, n + 1)
