"""Headline scores of a state, read from the eval table: one Score (value, stderr, n) per suite."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from ..catalog.models import EvalResult
from ..errors import EvaluationError
from .cache import Suite, cached_rows

# The name the base's general suite is stored, decided and reported under.
GENERAL_SUITE = "general"
# A suite's headline metric, when it does not name one: the first of these it reports.
HEADLINE_METRICS = ("exact_match", "acc")


@dataclass(frozen=True)
class Score:
    """One suite's headline score: value, its standard error and the number of samples."""

    value: float
    stderr: float = 0.0
    n: int = 0


def headline(rows: Sequence[EvalResult], metric: str | None = None) -> Score:
    """The score of one suite version's rows: the mean over its tasks of the headline metric
    (``metric``, else the first of HEADLINE_METRICS present), stderr pooled as sqrt(sum se^2)/k."""
    wanted = (metric,) if metric else HEADLINE_METRICS
    name = next((m for m in wanted if any(r.metric == m for r in rows)), None)
    if name is None:
        suite = rows[0].suite if rows else "?"
        raise EvaluationError(f"Suite {suite!r} has no {' or '.join(map(repr, wanted))} results; "
                              "evaluate it first or set its headline metric.")
    picked = [r for r in rows if r.metric == name]
    k = len(picked)
    return Score(sum(r.value for r in picked) / k,
                 math.sqrt(sum((r.stderr or 0.0) ** 2 for r in picked)) / k,
                 sum(r.n for r in picked))


def suite_scores(session, state_id: int, suites: Sequence[Suite] | None = None, *,
                 limit: int | None = None) -> dict[str, Score]:
    """Headline score per suite of a state.

    With ``suites``: exactly those suite versions at that sample limit, as evaluate_state
    stored them (what the gate compares); a suite with no rows is left out. Without: every
    suite the eval table holds for the state at its newest version (what reports show); a
    suite with no headline metric is left out.
    """
    if suites is not None:
        out = {}
        for suite in suites:
            rows = cached_rows(session, state_id, suite, limit)
            if rows:
                out[suite.name] = headline(rows, suite.headline_metric)
        return out
    rows = list(session.scalars(sa.select(EvalResult).where(EvalResult.state_id == state_id)
                                .order_by(EvalResult.id)))
    newest = {r.suite: r.suite_version for r in rows}
    out = {}
    for suite, version in newest.items():
        try:
            out[suite] = headline([r for r in rows
                                   if r.suite == suite and r.suite_version == version])
        except EvaluationError:
            continue
    return out
