"""The gate decision: confidence bounds on the new skill's gain and on every earlier drop."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace

from ..errors import EvaluationError
from ..evaluation.compare import Comparison
from ..evaluation.scores import GENERAL_SUITE, Score
from ..evaluation.stats import holm
from .policy import GatePolicy

PASSED, FAILED, INCONCLUSIVE = "passed", "failed", "inconclusive"


@dataclass(frozen=True)
class Check:
    """One claim of the decision, with the evidence for it.

    ``kind`` "gain" (the new skill), "fidelity" (the pack state against the uncompressed
    fine-tune on the new skill) or "drop" (an earlier skill, the general suite).
    ``estimate`` is the paired gain (after - before), the fidelity margin (pack state -
    min_fidelity x fine-tune) or drop (before - after) over the prompts;
    ``low`` and ``high`` bound it, each end a one-sided bound at ``confidence`` (for drops the
    Holm-adjusted level). ``p_value`` is one-sided, for H0 "gain <= threshold", "fidelity gap
    <= threshold" or "drop >= threshold" (Holm-adjusted for drops). ``status`` is passed,
    failed (the evidence says the skill was not learned / was lost in compression / was
    forgotten) or inconclusive (``needed_n`` prompts would decide). ``before``/``after`` are
    the headline scores (for fidelity: the fine-tune's and the pack state's) and ``delta``
    their difference.
    """

    suite: str
    kind: str
    before: float
    after: float
    delta: float
    threshold: float
    passed: bool
    reason: str
    estimate: float
    low: float
    high: float
    test: str
    p_value: float
    n: int
    confidence: float
    status: str
    needed_n: int | None = None


@dataclass(frozen=True)
class Decision:
    """promote is True only when every check passed. The verdict is "promoted", "rejected"
    (a check failed) or "inconclusive" (no check failed but one could not be decided)."""

    promote: bool
    new_skill: str
    checks: tuple[Check, ...] = field(default_factory=tuple)
    notes: tuple[str, ...] = ()

    @property
    def verdict(self) -> str:
        if self.promote:
            return "promoted"
        statuses = {c.status for c in self.checks}
        return "inconclusive" if INCONCLUSIVE in statuses and FAILED not in statuses \
            else "rejected"

    @property
    def needed_n(self) -> int | None:
        """The most prompts any inconclusive check asks for."""
        wanted = [c.needed_n for c in self.checks if c.status == INCONCLUSIVE and c.needed_n]
        return max(wanted) if wanted else None

    @property
    def reasons(self) -> list[str]:
        failed = [c.reason for c in self.checks if not c.passed]
        return failed or ["all checks passed"]

    def summary(self) -> str:
        """One line for the audit; an inconclusive one starts "inconclusive: needs n ≈ N"."""
        if self.verdict == "inconclusive":
            need = f"n ≈ {self.needed_n}" if self.needed_n else "more samples"
            return f"inconclusive: needs {need} per suite; " + "; ".join(self.reasons)
        return f"{self.verdict}: " + "; ".join(self.reasons)

    def as_dict(self) -> dict:
        return {"promote": self.promote, "verdict": self.verdict, "new_skill": self.new_skill,
                "reasons": self.reasons, "needed_n": self.needed_n, "notes": list(self.notes),
                "checks": [asdict(c) for c in self.checks]}


def _score(scores: Mapping[str, Score], suite: str, which: str) -> Score:
    if suite not in scores:
        raise EvaluationError(
            f"No {which} score for suite {suite!r}; "
            "evaluate that suite on both states before deciding."
        )
    return scores[suite]


def _compare(suite: str, before: Mapping[str, Score], after: Mapping[str, Score], *,
             corrected: bool = False) -> Comparison:
    return Comparison.of(suite, _score(before, suite, "current-state"),
                         _score(after, suite, "candidate"), corrected=corrected)


def _status(passes: bool, fails: bool) -> str:
    return PASSED if passes else FAILED if fails else INCONCLUSIVE


def _inconclusive(need: int | None) -> str:
    """The tail of an inconclusive check's reason; no n decides an estimate on its threshold."""
    return (f" (inconclusive: needs n ≈ {need})" if need
            else " (inconclusive: the estimate sits on the threshold; more samples)")


def _gain_check(cmp: Comparison, threshold: float, confidence: float, power: float) -> Check:
    t = cmp.at(confidence)
    est = t.difference
    status = _status(t.low >= threshold, t.high < threshold)
    need = (cmp.needed_n(abs(est - threshold), est - t.low, confidence, power)
            if status == INCONCLUSIVE else None)
    p = cmp.p_above(threshold)
    reason = (f"{cmp.suite}: gained {est:+.3f} [{t.low:+.3f}, {t.high:+.3f}] ({t.test}, "
              f"n={t.n}, p={p:.2g}); lower bound needs >= {threshold:+.3f}"
              + {PASSED: "", FAILED: " (too little gain)",
                 INCONCLUSIVE: _inconclusive(need)}[status])
    return Check(cmp.suite, "gain", cmp.before.value, cmp.after.value,
                 cmp.after.value - cmp.before.value, threshold, status == PASSED, reason, est,
                 t.low, t.high, t.test, p, t.n, confidence, status, need)


def _fidelity_check(suite: str, finetune: Score, pack: Score, min_fidelity: float,
                    confidence: float, power: float) -> Check:
    """The pack state keeps ``min_fidelity`` of the uncompressed fine-tune's score on the same
    prompts: p_pack >= min_fidelity x p_finetune, i.e. the mean of the paired per-prompt
    differences pack - min_fidelity x fine-tune is at least 0. Its lower bound (a paired
    bootstrap: the differences are not 0/1) must reach 0. A fine-tune that scored 0 asks
    nothing of the pack."""
    scaled = replace(finetune, value=min_fidelity * finetune.value,
                     stderr=min_fidelity * finetune.stderr,
                     samples=(None if finetune.samples is None else
                              {k: min_fidelity * v for k, v in finetune.samples.items()}))
    cmp = Comparison.of(suite, scaled, pack)
    if finetune.value <= 0.0:
        reason = f"{suite}: the fine-tune scored 0, so there is nothing for the pack to keep"
        return Check(suite, "fidelity", finetune.value, pack.value, pack.value, 0.0, True,
                     reason, pack.value, pack.value, pack.value, "none", 0.0, cmp.n, confidence,
                     PASSED)
    t = cmp.at(confidence)
    est = t.difference
    status = _status(t.low >= 0.0, t.high < 0.0)
    need = (cmp.needed_n(abs(est), est - t.low, confidence, power)
            if status == INCONCLUSIVE else None)
    p = cmp.p_above(0.0)
    reason = (f"{suite}: the pack keeps {pack.value / finetune.value:.3f} of the fine-tune's "
              f"{finetune.value:.3f}; "
              f"pack - {min_fidelity:.2f} x fine-tune {est:+.3f} [{t.low:+.3f}, {t.high:+.3f}] "
              f"({t.test}, n={t.n}, p={p:.2g}); lower bound needs >= 0"
              + {PASSED: "", FAILED: " (compression lost the skill)",
                 INCONCLUSIVE: _inconclusive(need)}[status])
    return Check(suite, "fidelity", finetune.value, pack.value, pack.value - finetune.value, 0.0,
                 status == PASSED, reason, est, t.low, t.high, t.test, p, t.n, confidence,
                 status, need)


def holm_levels(items: Mapping[str, tuple[Comparison, float]],
                confidence: float) -> dict[str, float]:
    """Holm's step-down run on the bounds: with r drop checks undecided, each is tested at
    confidence 1 - alpha/r; those whose upper bound is within tolerance pass and leave, and the
    rest are tested again at the next level, until none passes (they keep the last level)."""
    alpha, level = 1.0 - confidence, {}
    remaining = list(items)
    while remaining:
        c = 1.0 - alpha / len(remaining)
        passing = [k for k in remaining if -items[k][0].at(c).low <= items[k][1]]
        for k in passing or remaining:
            level[k] = c
        if not passing:
            break
        remaining = [k for k in remaining if k not in passing]
    return level


def _drop_checks(items: Mapping[str, tuple[Comparison, float]], confidence: float,
                 power: float) -> list[Check]:
    if not items:
        return []
    level = holm_levels(items, confidence)
    adjusted = holm({k: cmp.p_above(-tol) for k, (cmp, tol) in items.items()},
                    alpha=1.0 - confidence)
    checks = []
    for suite, (cmp, tol) in items.items():
        t = cmp.at(level[suite])
        drop, low, high = 0.0 - t.difference, 0.0 - t.high, 0.0 - t.low
        status = _status(high <= tol, low > tol)
        need = (cmp.needed_n(abs(tol - drop), high - drop, level[suite], power)
                if status == INCONCLUSIVE else None)
        p = adjusted[suite].adjusted_p
        reason = (("forgot " if status == FAILED else "")
                  + f"{suite}: dropped {drop:+.3f} [{low:+.3f}, {high:+.3f}] at {level[suite]:.4g}"
                  f" ({t.test}, n={t.n}, Holm p={p:.2g}); upper bound allowed {tol:.3f}"
                  + (_inconclusive(need) if status == INCONCLUSIVE else ""))
        checks.append(Check(suite, "drop", cmp.before.value, cmp.after.value,
                            cmp.after.value - cmp.before.value, tol, status == PASSED, reason,
                            drop, low, high, t.test, p, t.n, level[suite], status, need))
    return checks


def decide(policy: GatePolicy, *, new_skill: str, before: Mapping[str, Score],
           after: Mapping[str, Score], earlier_skills: Sequence[str],
           general_suites: Sequence[str] = (GENERAL_SUITE,),
           finetune: Score | None = None) -> Decision:
    """Judge a candidate: ``before`` holds the current state's scores, ``after`` the candidate's
    (both on the same prompts; with per-sample scores the comparison is paired).

    Learned: the one-sided lower bound (at ``policy.confidence``; for 0/1 scores Tango's score
    bound with a continuity correction of 1/(2n)) of the new skill's gain is at least its
    ``min_gain``. Faithful (when ``finetune``, the uncompressed fine-tune's score on
    the new skill's prompts, is given and ``policy.min_fidelity`` > 0): the lower bound of the
    paired mean of pack state - min_fidelity x fine-tune is at least 0. No regression:
    for every earlier skill and every general suite the one-sided upper bound of the drop is
    within its tolerance, the bounds Holm-adjusted across these checks. Promoted when every
    check passes; rejected when one fails (its opposite bound is beyond the threshold);
    otherwise inconclusive, with the n that would decide it.
    """
    # The learned check reads the continuity-corrected bound: uncorrected, a skill learned
    # from nothing passes a true gain equal to min_gain in 6.3% of decisions (nominal 5%).
    checks = [_gain_check(_compare(new_skill, before, after, corrected=True),
                          policy.min_gain_for(new_skill), policy.confidence, policy.power)]
    notes: list[str] = []
    if finetune is not None and policy.min_fidelity > 0.0:
        checks.append(_fidelity_check(new_skill, finetune, _score(after, new_skill, "candidate"),
                                      policy.min_fidelity, policy.confidence, policy.power))
    elif policy.min_fidelity > 0.0:
        notes.append("fidelity not checked: no score of the uncompressed fine-tune was given")
    drops = {skill: (_compare(skill, before, after), policy.max_drop_for(skill))
             for skill in dict.fromkeys(earlier_skills) if skill != new_skill}
    drops |= {suite: (_compare(suite, before, after), policy.max_general_drop)
              for suite in dict.fromkeys(general_suites)}
    checks += _drop_checks(drops, policy.confidence, policy.power)
    tested = {new_skill, *earlier_skills}
    notes += [f"policy per_skill names {name!r}, which this decision does not test"
              for name in policy.per_skill if name not in tested]
    return Decision(promote=all(c.passed for c in checks), new_skill=new_skill,
                    checks=tuple(checks), notes=tuple(notes))
