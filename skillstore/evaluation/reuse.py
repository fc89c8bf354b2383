"""Reuse a reference state's per-sample outcomes for the docs a candidate routes the same way.

A doc whose every request gets the same route (same pack digests, same weights, same way of
applying them) in the candidate as in the reference is answered the same way by both, so its
outcome is copied from the reference's eval row; only the docs whose route changed (or cannot
be predicted) run through lm-eval again, with ``samples=``. The merged row is a normal eval
row: value, stderr from the samples, n and the samples blob.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa
import torch

from ..catalog.models import EvalResult
from ..errors import EvaluationError
from ..states.view import StateView
from .cache import Suite, cache_version, cached_rows, read_samples
from .doc_requests import TaskRequests, Tokens, pooled, same_contexts, task_requests
from .routes import Route, StateRoutes, margin_for
from .runner import TaskResult, sample_stderr


@dataclass(frozen=True)
class TaskPlan:
    """One task of the candidate: the reference's per-sample scores per metric, the docs
    evaluated again (``changed``, sorted) and those whose outcome is copied (``reused``)."""

    task: str
    reference: dict[str, dict[str, float]]
    changed: tuple[int, ...]
    reused: tuple[str, ...]

    def merged(self, fresh: Sequence[TaskResult]) -> list[TaskResult]:
        """Every reference metric over all docs: copied outcomes plus the fresh ones."""
        by_metric = {r.metric: r for r in fresh if r.task == self.task}
        out = []
        for metric, ref in sorted(self.reference.items()):
            samples = {doc: ref[doc] for doc in self.reused}
            if self.changed:
                new = by_metric.get(metric)
                if new is None or new.samples is None:
                    raise EvaluationError(
                        f"lm-eval gave no per-sample {metric!r} for the re-evaluated docs of "
                        f"task {self.task!r}; evaluate the candidate without reuse.")
                samples.update(new.samples)
            values = list(samples.values())
            out.append(TaskResult(self.task, metric, math.fsum(values) / len(values),
                                  sample_stderr(samples), len(samples), samples))
        return out


@dataclass(frozen=True)
class ReuseRecord:
    """Which of a candidate's per-sample outcomes were copied, and from which state.

    ``reused``: suite -> task -> the doc ids whose outcome was copied from ``from_state_id``'s
    eval rows; ``evaluated``: suite -> docs lm-eval answered for the candidate in this
    evaluation (0 for a suite already cached).
    """

    from_state_id: int
    reused: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    evaluated: dict[str, int] = field(default_factory=dict)

    @property
    def n_reused(self) -> int:
        return sum(len(docs) for tasks in self.reused.values() for docs in tasks.values())

    @property
    def n_evaluated(self) -> int:
        return sum(self.evaluated.values())

    def as_json(self) -> dict:
        return {"from_state_id": self.from_state_id, "reused": self.reused,
                "evaluated": self.evaluated, "n_reused": self.n_reused,
                "n_evaluated": self.n_evaluated}

    @classmethod
    def from_json(cls, doc: dict) -> ReuseRecord:
        reused = {s: {t: list(d) for t, d in tasks.items()} for s, tasks in doc["reused"].items()}
        return cls(doc["from_state_id"], reused,
                   {s: int(n) for s, n in doc["evaluated"].items()})


class OutcomeReuse:
    """Plans, suite by suite, which docs of the candidate keep the reference's outcomes.

    Only the suites of ``skills`` are planned (the earlier skills: the new skill's suite and the
    general suite are always evaluated in full), only against the reference's rows at the same
    suite version and sample limit, and only for tasks whose every row kept its samples.
    ``model`` is the plain base: routes are predicted from its pooled features.
    """

    def __init__(self, session, blobs, model, tokenizer, reference: StateView,
                 candidate: StateView, *, skills: Sequence[str], limit: int | None = None,
                 batch_size: int = 16, cache_dir: str | Path | None = None,
                 margin: float | None = None):
        self.session, self.blobs = session, blobs
        self.model, self.tokenizer = model, tokenizer
        self.skills, self.limit, self.batch_size = set(skills), limit, batch_size
        margin = margin_for(next(model.parameters()).dtype) if margin is None else margin
        self.reference = StateRoutes(reference, blobs, margin=margin, cache_dir=cache_dir)
        self.candidate = StateRoutes(candidate, blobs, margin=margin, cache_dir=cache_dir)
        self.reused: dict[str, dict[str, list[str]]] = {}
        # Both states read the base: (feature key, tokens) -> features.
        self.features: dict[tuple[tuple[str, int], Tokens], torch.Tensor] = {}
        self.predicted: dict[str, dict[str, dict[tuple[int, ...], Route | None]]] = {
            "reference": {}, "candidate": {}}

    def plan(self, suite: Suite, tasks: Sequence[str]) -> dict[str, TaskPlan]:
        """task -> plan for the tasks of ``suite`` that can reuse outcomes; the others (absent)
        are evaluated in full."""
        if suite.name not in self.skills:
            return {}
        rows = cached_rows(self.session, self.reference.view.id, suite, self.limit)
        plans = {}
        for task in tasks:
            task_rows = [r for r in rows if r.task == task]
            if not task_rows or any(r.samples_digest is None for r in task_rows):
                continue
            reference = {r.metric: read_samples(self.blobs, r.samples_digest) for r in task_rows}
            plan = self._plan_task(suite, task, reference)
            if plan is not None:
                plans[task] = plan
                self.reused.setdefault(suite.name, {})[task] = list(plan.reused)
        return plans

    def _plan_task(self, suite: Suite, task: str,
                   reference: dict[str, dict[str, float]]) -> TaskPlan | None:
        requests = task_requests(self.model, self.tokenizer, suite.include_path, task,
                                 limit=self.limit, batch_size=self.batch_size)
        docs = {str(d) for d in requests.tokens}
        if any(set(samples) != docs for samples in reference.values()):
            return None  # the reference scored other docs: nothing to pair with
        before = self._doc_routes("reference", self.reference, suite.name, requests)
        after = self._doc_routes("candidate", self.candidate, suite.name, requests)
        changed = tuple(sorted(d for d in requests.tokens
                               if before[d] is None or before[d] != after[d]))
        if len(changed) == len(docs):
            return None
        if changed and not same_contexts(suite.include_path, task, requests, changed):
            return None
        kept = set(changed)
        return TaskPlan(task, reference, changed,
                        tuple(str(d) for d in sorted(requests.tokens) if d not in kept))

    def _doc_routes(self, which: str, routes: StateRoutes, suite: str,
                    requests: TaskRequests) -> dict[int, tuple[Route, ...] | None]:
        """doc -> the route of each of its requests in one state (None: unpredictable)."""
        seqs = [t for ts in requests.tokens.values() if ts is not None for t in ts]
        feats, key = None, routes.feature_key
        if key is not None and seqs:
            todo = [t for t in seqs if (key, t) not in self.features]
            if todo:
                self.features.update(((key, t), f)
                                     for t, f in pooled(self.model, todo, key).items())
            feats = torch.stack([self.features[key, t] for t in seqs])
        flat = dict(zip(seqs, routes.routes(suite, feats, len(seqs)), strict=True))
        seen = self.predicted[which].setdefault(suite, {})
        for (ids, mask), route in flat.items():
            seen[tuple(i for i, m in zip(ids, mask, strict=True) if m)] = route
        out: dict[int, tuple[Route, ...] | None] = {}
        for doc, tokens in requests.tokens.items():
            doc_routes = None if tokens is None else tuple(flat[t] for t in tokens)
            out[doc] = None if doc_routes is None or None in doc_routes else doc_routes
        return out

    def record(self, candidate_id: int, suites: Sequence[Suite],
               todo: dict[str, list[str]]) -> ReuseRecord:
        """What happened for the candidate: copied docs, and docs lm-eval answered, per suite
        (``todo``: the tasks the candidate lacked before it was evaluated)."""
        return ReuseRecord(self.reference.view.id, self.reused,
                           evaluated_docs(self.session, candidate_id, suites, todo, self.limit,
                                          self.reused))


def evaluated_docs(session, state_id: int, suites: Sequence[Suite], todo: dict[str, list[str]],
                   limit: int | None, reused: dict[str, dict[str, list[str]]]) -> dict[str, int]:
    """suite -> docs lm-eval answered for ``state_id`` in one evaluation: the n of each task
    it lacked before (``todo``), less the docs copied from another state."""
    out = {}
    for suite in suites:
        tasks = todo.get(suite.name, [])
        n = 0
        if tasks:
            counts = session.execute(
                sa.select(EvalResult.task, sa.func.max(EvalResult.n))
                .where(EvalResult.state_id == state_id, EvalResult.suite == suite.name,
                       EvalResult.suite_version == cache_version(suite, limit),
                       EvalResult.task.in_(tasks))
                .group_by(EvalResult.task)).all()
            copied = reused.get(suite.name, {})
            n = sum(count - len(copied.get(task, ())) for task, count in counts)
        out[suite.name] = n
    return out

