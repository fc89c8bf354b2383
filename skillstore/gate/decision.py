"""The gate decision: compare a candidate state's scores with the current one's, check by check."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

from ..errors import EvaluationError
from ..evaluation.scores import GENERAL_SUITE, Score
from .policy import GatePolicy


@dataclass(frozen=True)
class Check:
    """One line of the decision: which suite, what was compared, and whether it passed."""

    suite: str
    kind: str  # "gain" on the new skill, "drop" on an earlier skill or the general suite
    before: float
    after: float
    delta: float
    margin: float  # the confidence half-width used for drops (z * combined stderr)
    threshold: float
    passed: bool
    reason: str


@dataclass(frozen=True)
class Decision:
    """promote is True only when every check passed; reasons name each failed check."""

    promote: bool
    new_skill: str
    checks: tuple[Check, ...] = field(default_factory=tuple)

    @property
    def reasons(self) -> list[str]:
        failed = [c.reason for c in self.checks if not c.passed]
        return failed or ["all checks passed"]

    @property
    def verdict(self) -> str:
        return "promoted" if self.promote else "rejected"

    def summary(self) -> str:
        return f"{self.verdict}: " + "; ".join(self.reasons)

    def as_dict(self) -> dict:
        return {"promote": self.promote, "verdict": self.verdict, "new_skill": self.new_skill,
                "reasons": self.reasons, "checks": [asdict(c) for c in self.checks]}


def _score(scores: Mapping[str, Score], suite: str, which: str) -> Score:
    if suite not in scores:
        raise EvaluationError(
            f"No {which} score for suite {suite!r}; "
            "evaluate that suite on both states before deciding."
        )
    return scores[suite]


def _drop_check(suite: str, before: Score, after: Score, tolerance: float, z: float) -> Check:
    delta = after.value - before.value
    margin = z * math.sqrt(before.stderr ** 2 + after.stderr ** 2)
    passed = -delta <= tolerance + margin
    reason = (f"{suite}: {before.value:.3f} -> {after.value:.3f} ({delta:+.3f}), "
              f"allowed drop {tolerance:.3f} + margin {margin:.3f}")
    return Check(suite, "drop", before.value, after.value, delta, margin, tolerance, passed,
                 ("" if passed else "forgot ") + reason)


def decide(policy: GatePolicy, *, new_skill: str, before: Mapping[str, Score],
           after: Mapping[str, Score], earlier_skills: Sequence[str],
           general_suites: Sequence[str] = (GENERAL_SUITE,)) -> Decision:
    """Judge a candidate: ``before`` holds the current state's scores, ``after`` the candidate's.

    The new skill must gain at least ``min_gain`` (point estimate); every earlier skill and
    every general suite may drop by at most its tolerance plus the confidence margin.
    """
    checks: list[Check] = []
    b, a = _score(before, new_skill, "current-state"), _score(after, new_skill, "candidate")
    gain = a.value - b.value
    need = policy.min_gain_for(new_skill)
    passed = gain >= need
    checks.append(Check(new_skill, "gain", b.value, a.value, gain, 0.0, need, passed,
                        f"{new_skill}: gained {gain:+.3f}, needs at least {need:+.3f}"
                        + ("" if passed else " (too little gain)")))
    for skill in earlier_skills:
        if skill == new_skill:
            continue
        checks.append(_drop_check(skill, _score(before, skill, "current-state"),
                                  _score(after, skill, "candidate"), policy.max_drop_for(skill),
                                  policy.z))
    for suite in general_suites:
        checks.append(_drop_check(suite, _score(before, suite, "current-state"),
                                  _score(after, suite, "candidate"), policy.max_general_drop,
                                  policy.z))
    return Decision(promote=all(c.passed for c in checks), new_skill=new_skill,
                    checks=tuple(checks))
