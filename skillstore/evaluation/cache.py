"""Evaluate model states suite by suite, never twice: results are cached in the eval table."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Protocol

import sqlalchemy as sa

from ..catalog.models import EvalResult, ModelState
from .runner import TaskResult, lm_eval_version, run_tasks, suite_version


@dataclass(frozen=True)
class Suite:
    """A named set of lm-eval tasks in one folder; skill_id None marks the base's general suite.

    ``headline_metric`` None takes the first of ``scores.HEADLINE_METRICS`` the tasks report.
    """

    name: str
    include_path: Path
    tasks: tuple[str, ...]
    skill_id: int | None = None
    headline_metric: str | None = None

    @cached_property
    def version(self) -> str:
        return suite_version(self.include_path, self.tasks)


# Given a suite, yield (model, tokenizer) with the state materialised for that suite's inputs
# (the tag router, for one, puts a different pack in front of each skill's suite).
Loader = Callable[[Suite], AbstractContextManager[tuple[object, object]]]
Runner = Callable[..., list[TaskResult]]


class PartialPlan(Protocol):
    """A task whose outcomes are partly copied from another state (evaluation.reuse.TaskPlan):
    only the ``changed`` docs run, and ``merged`` completes their results."""

    changed: tuple[int, ...]

    def merged(self, fresh: Sequence[TaskResult]) -> list[TaskResult]: ...


class Reuse(Protocol):
    """Decides which tasks of a suite reuse outcomes (evaluation.reuse.OutcomeReuse)."""

    def plan(self, suite: Suite, tasks: Sequence[str]) -> Mapping[str, PartialPlan]: ...


def samples_bytes(samples: dict[str, float]) -> bytes:
    """The blob of one result's per-sample scores: canonical JSON {doc id: score}."""
    return json.dumps(samples, sort_keys=True, separators=(",", ":")).encode()


def read_samples(blobs, digest: str) -> dict[str, float]:
    """The per-sample scores an eval row's ``samples_digest`` names (verified by the store)."""
    return {str(k): float(v) for k, v in json.loads(blobs.get_bytes(digest)).items()}


def cache_version(suite: Suite, limit: int | None = None) -> str:
    """The suite version a result is stored under; a sample limit is part of it, so a quick
    run on a subset never stands in for a full one."""
    return suite.version if limit is None else f"{suite.version}:limit={limit}"


def cached_rows(session, state_id: int, suite: Suite, limit: int | None = None) -> list[EvalResult]:
    """The eval rows already stored for this state and this exact suite version."""
    return list(session.scalars(
        sa.select(EvalResult)
        .where(EvalResult.state_id == state_id, EvalResult.suite == suite.name,
               EvalResult.suite_version == cache_version(suite, limit),
               EvalResult.task.in_(suite.tasks))
        .order_by(EvalResult.task, EvalResult.metric)
    ))


def missing_tasks(session, state_id: int, suite: Suite, limit: int | None = None) -> list[str]:
    done = {row.task for row in cached_rows(session, state_id, suite, limit)}
    return [t for t in suite.tasks if t not in done]


def evaluate_state(session, state: ModelState, suites: Sequence[Suite], load: Loader, *,
                   runner: Runner = run_tasks, batch_size: int = 16,
                   limit: int | None = None, blobs=None,
                   reuse: Reuse | None = None) -> list[EvalResult]:
    """Evaluate ``state`` on every suite, running lm-eval only on (task, suite version) pairs
    the eval table does not hold for this state; returns all rows, cached and new.

    With ``reuse``, a task it plans runs lm-eval only on its changed docs (``samples=``) and
    copies the other docs' outcomes; the model is not even loaded when nothing changed.

    With a blob store, each new row of a mean metric keeps its per-sample scores as a blob
    (``samples_digest``), which paired tests between states read; without one they are lost.
    Rows are flushed, not committed: the caller's transaction decides.
    """
    version = lm_eval_version()
    for suite in suites:
        todo = missing_tasks(session, state.id, suite, limit)
        if not todo:
            continue
        plans = reuse.plan(suite, todo) if reuse is not None else {}
        full = [t for t in todo if t not in plans]
        subset = {t: list(p.changed) for t, p in plans.items() if p.changed}
        fresh: list[TaskResult] = []
        if full or subset:
            with load(suite) as (model, tokenizer):
                if full:
                    fresh += runner(model, tokenizer, full, include_path=suite.include_path,
                                    batch_size=batch_size, limit=limit)
                if subset:
                    fresh += runner(model, tokenizer, list(subset),
                                    include_path=suite.include_path, batch_size=batch_size,
                                    samples=subset)
        results = [r for r in fresh if r.task in full] + [
            r for t, p in plans.items() for r in p.merged([f for f in fresh if f.task == t])]
        session.add_all(
            EvalResult(state_id=state.id, skill_id=suite.skill_id, suite=suite.name,
                       suite_version=cache_version(suite, limit), task=r.task, metric=r.metric,
                       value=r.value, stderr=r.stderr, n=r.n, lm_eval_version=version,
                       samples_digest=(blobs.put_bytes(samples_bytes(r.samples))
                                       if blobs is not None and r.samples else None))
            for r in results
        )
        session.flush()
    return [row for suite in suites for row in cached_rows(session, state.id, suite, limit)]

