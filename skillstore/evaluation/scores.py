"""Headline scores of a state, read from the eval table: one Score (value, stderr, n) per suite."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from statistics import NormalDist

import sqlalchemy as sa

from ..catalog.models import EvalResult
from ..errors import EvaluationError
from .cache import Suite, cache_version, cached_rows, read_samples
from .runner import run_tasks, sample_stderr
from .stats import Interval, wilson_interval

# The name the base's general suite is stored, decided and reported under.
GENERAL_SUITE = "general"
# A suite's headline metric, when it does not name one: the first of these it reports.
HEADLINE_METRICS = ("exact_match", "acc")


@dataclass(frozen=True)
class Score:
    """One suite's headline score: value, its standard error and the number of samples.

    ``samples`` maps each prompt to its score (doc id, or "task/doc id" for a suite of several
    tasks) when the per-sample blobs were read; two states' samples pair prompt by prompt.
    ``version`` is the suite version (with its sample limit) and ``metric`` the headline metric
    the score was read at, so the same eval rows can be found again.
    """

    value: float
    stderr: float = 0.0
    n: int = 0
    samples: dict[str, float] | None = None
    version: str | None = None
    metric: str | None = None

    @property
    def binary(self) -> bool:
        """A proportion: 0/1 samples, or (without samples) a value in [0, 1]."""
        if self.samples is not None:
            return all(v in (0.0, 1.0) for v in self.samples.values())
        return 0.0 <= self.value <= 1.0

    def interval_at(self, confidence: float = 0.95) -> Interval:
        """Two-sided interval: Wilson for a proportion with a known n, else value +- z*stderr."""
        if self.n > 0 and self.binary:
            successes = (round(sum(self.samples.values())) if self.samples is not None
                         else round(self.value * self.n))
            return wilson_interval(min(self.n, max(0, successes)), self.n, confidence)
        z = two_sided_z(confidence)
        return Interval(self.value - z * self.stderr, self.value + z * self.stderr)

    @property
    def interval(self) -> Interval:
        """The 95% interval (interval_at for another confidence)."""
        return self.interval_at(0.95)

    def as_json(self) -> dict:
        """value, stderr, n, version and metric; the samples stay in their blobs."""
        return {"value": self.value, "stderr": self.stderr, "n": self.n,
                "version": self.version, "metric": self.metric}


def two_sided_z(confidence: float) -> float:
    """The normal quantile of a two-sided interval at `confidence` (1.96 at 0.95)."""
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def _samples(rows: Sequence[EvalResult], blobs) -> dict[str, float] | None:
    if blobs is None or not rows or any(r.samples_digest is None for r in rows):
        return None
    if len(rows) == 1:
        return read_samples(blobs, rows[0].samples_digest)
    return {f"{r.task}/{doc}": v for r in rows
            for doc, v in read_samples(blobs, r.samples_digest).items()}


def headline(rows: Sequence[EvalResult], metric: str | None = None, *, blobs=None) -> Score:
    """The score of one suite version's rows: the mean over its tasks of the headline metric
    (``metric``, else the first of HEADLINE_METRICS present), stderr pooled as sqrt(sum se^2)/k.
    With a blob store, the per-sample scores too (None when any task's row has none)."""
    wanted = (metric,) if metric else HEADLINE_METRICS
    name = next((m for m in wanted if any(r.metric == m for r in rows)), None)
    if name is None:
        suite = rows[0].suite if rows else "?"
        raise EvaluationError(f"Suite {suite!r} has no {' or '.join(map(repr, wanted))} results; "
                              "evaluate it first or set its headline metric.")
    picked = sorted((r for r in rows if r.metric == name), key=lambda r: r.task)
    k = len(picked)
    return Score(sum(r.value for r in picked) / k,
                 math.sqrt(sum((r.stderr or 0.0) ** 2 for r in picked)) / k,
                 sum(r.n for r in picked), _samples(picked, blobs),
                 version=picked[0].suite_version, metric=name)


def suite_scores(session, state_id: int, suites: Sequence[Suite] | None = None, *,
                 limit: int | None = None, blobs=None) -> dict[str, Score]:
    """Headline score per suite of a state (with per-sample scores when ``blobs`` is given).

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
                out[suite.name] = headline(rows, suite.headline_metric, blobs=blobs)
        return out
    rows = list(session.scalars(sa.select(EvalResult).where(EvalResult.state_id == state_id)
                                .order_by(EvalResult.id)))
    newest = {r.suite: r.suite_version for r in rows}
    out = {}
    for suite, version in newest.items():
        try:
            out[suite] = headline([r for r in rows
                                   if r.suite == suite and r.suite_version == version],
                                  blobs=blobs)
        except EvaluationError:
            continue
    return out


def with_samples(session, blobs, state_id: int, scores: Mapping[str, Score]) -> dict[str, Score]:
    """``scores`` with their per-sample scores read again from the eval rows they were read
    from (same state, suite, version and metric). A score that names no version, or whose rows
    kept no samples, is returned as it is (and is compared unpaired)."""
    out = {}
    for suite, score in scores.items():
        if score.samples is not None or score.version is None or score.metric is None:
            out[suite] = score
            continue
        rows = list(session.scalars(
            sa.select(EvalResult)
            .where(EvalResult.state_id == state_id, EvalResult.suite == suite,
                   EvalResult.suite_version == score.version, EvalResult.metric == score.metric)
            .order_by(EvalResult.task)))
        out[suite] = replace(score, samples=_samples(rows, blobs))
    return out


def model_score(model, tokenizer, suite: Suite, *, limit: int | None = None,
                batch_size: int = 16, runner=run_tasks) -> Score:
    """A plain in-memory model's headline score on ``suite`` (a fine-tuned checkpoint, a
    baseline stage: no ModelState): the runner and the headline rule that evaluate_state and
    suite_scores apply to a state, at the same suite version, with per-sample scores keyed as
    a state's are, so the two pair prompt by prompt."""
    results = runner(model, tokenizer, list(suite.tasks), include_path=suite.include_path,
                     batch_size=batch_size, limit=limit)
    score = headline([EvalResult(suite=suite.name, suite_version=cache_version(suite, limit),
                                 task=r.task, metric=r.metric, value=r.value, stderr=r.stderr,
                                 n=r.n) for r in results], suite.headline_metric)
    picked = sorted((r for r in results if r.metric == score.metric), key=lambda r: r.task)
    if not all(r.samples for r in picked):
        return score
    samples = (picked[0].samples if len(picked) == 1 else
               {f"{r.task}/{doc}": v for r in picked for doc, v in r.samples.items()})
    return replace(score, samples=samples)


def subset(score: Score, keys) -> Score | None:
    """The score on the prompts ``keys`` (doc ids) only, from its per-sample scores: the mean
    and, for 0/1 samples, the binomial stderr; None when it kept no samples or none of
    ``keys`` was scored."""
    if score.samples is None:
        return None
    part = {k: score.samples[k] for k in keys if k in score.samples}
    if not part:
        return None
    return Score(sum(part.values()) / len(part), sample_stderr(part) or 0.0, len(part), part,
                 version=score.version, metric=score.metric)
