"""What one experiment run does for its method: the `EXECUTORS` registry (naive_ft, replay,
joint), the refusal of methods that are not runnable yet, and the inputs a run reads.

Every executor trains the spec's base in full, scores every skill's suite with the lm-eval path
the demo and the gate use (`evaluation.scores.model_score` on `evaluation.suites.skill_suite`),
and returns its accuracy matrix, continual metrics and bytes per skill (the dense fp16 delta).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy.orm import Session

from ..catalog import get_skill
from ..catalog.models import BaseCheckpoint, Experiment
from ..errors import ConfigError
from ..evaluation.cache import Suite, cache_version
from ..evaluation.metrics import ContinualMetrics, continual_metrics
from ..evaluation.scores import Score
from ..evaluation.suites import skill_suite
from ..registry import Registry
from ..training.baselines import Stage, replay_stages, train_joint
from .catalog import get_run
from .sequential import FP16_BYTES, ChangedParams, sequential_scores, skill_stages, suite_scores
from .spec import ExperimentSpec, parse_spec

SCORER = "lm-eval"
# progress(stage, fraction): raises RunCancelled when the run was cancelled meanwhile.
Check = Callable[[str, float], None]


@dataclass(frozen=True)
class RunInputs:
    """What a run needs, read from the catalog before it trains (no session is held after)."""

    run_id: int
    method: str
    seed: int
    spec: ExperimentSpec
    base_dir: str
    stages: list[Stage]
    suites: list[Suite]

    @property
    def train(self):
        """The spec's SFT settings at this run's seed."""
        return self.spec.train.model_copy(update={"seed": self.seed})


class Executor(Protocol):
    """One runnable method: trains the base for a run and returns the run's result."""

    @property
    def name(self) -> str: ...

    def execute(self, inputs: RunInputs, check: Check) -> dict: ...


@dataclass(frozen=True)
class Sequential:
    """Full fine-tuning skill after skill; with the spec's ``replay`` rows of every earlier
    skill mixed into each stage (method ``replay``; ``naive_ft`` mixes none)."""

    name: str

    def execute(self, inputs: RunInputs, check: Check) -> dict:
        from ..models import load_causal_lm

        model, tok = load_causal_lm(inputs.base_dir, fingerprint=False)
        limit = inputs.spec.eval_limit
        base_row = suite_scores(model, tok, inputs.suites, limit=limit)
        rows = inputs.spec.settings(self.name).replay
        stages = replay_stages(inputs.stages, rows, inputs.seed) if rows else inputs.stages
        counter, changed = ChangedParams(model), []

        def after_stage(i: int) -> None:
            changed.append(counter.step())
            check(f"{stages[i].name}:score", (i + 1) / len(stages))

        scores = sequential_scores(model, tok, stages, inputs.suites, inputs.train, limit=limit,
                                   progress=check, after_stage=after_stage)
        matrix = [[s.value for s in row] for row in scores]
        metrics = continual_metrics(matrix, [s.value for s in base_row])
        return _result(inputs, scores, metrics, base_row, changed,
                       replay_rows=rows, n_train=[len(s.train) for s in stages])


@dataclass(frozen=True)
class Joint:
    """Multi-task training on every skill at once: the upper bound. Its matrix is one row
    (there are no stages to forget across), and its one delta is shared by every skill."""

    name: str = "joint"

    def execute(self, inputs: RunInputs, check: Check) -> dict:
        from ..models import load_causal_lm

        model, tok = load_causal_lm(inputs.base_dir, fingerprint=False)
        limit = inputs.spec.eval_limit
        base_row = suite_scores(model, tok, inputs.suites, limit=limit)
        counter = ChangedParams(model)
        train_joint(model, tok, inputs.stages, inputs.train, check)
        changed = counter.step()
        check("joint:score", 1.0)
        final = suite_scores(model, tok, inputs.suites, limit=limit)
        values = [s.value for s in final]
        metrics = ContinualMetrics(average_accuracy=sum(values) / len(values), bwt=None,
                                   forgetting=None, forward_transfer=None,
                                   learned_average_accuracy=sum(values) / len(values))
        share = changed / len(inputs.stages)
        return _result(inputs, [final], metrics, base_row, [share] * len(inputs.stages),
                       n_train=[sum(len(s.train) for s in inputs.stages)])


EXECUTORS: Registry[Executor] = Registry(
    "experiment method", (Sequential("naive_ft"), Sequential("replay"), Joint()))


def _result(inputs: RunInputs, scores: list[list[Score]], metrics: ContinualMetrics,
            base_row: list[Score], changed: list[float], **extra) -> dict:
    names = [s.name for s in inputs.stages]
    return {"skills": names,
            "accuracy_matrix": [[s.value for s in row] for row in scores],
            "n": [[s.n for s in row] for row in scores],
            "base_scores": [s.value for s in base_row],
            "metrics": metrics.as_dict(),
            "changed_params": dict(zip(names, (round(c) for c in changed), strict=True)),
            "bytes_per_skill": dict(zip(names, (round(c * FP16_BYTES) for c in changed),
                                        strict=True)),
            "scorer": SCORER, "limit": inputs.spec.eval_limit,
            "suite_versions": [cache_version(s, inputs.spec.eval_limit) for s in inputs.suites],
            "train": inputs.train.model_dump(mode="json"), **extra}


def check_runnable(spec: ExperimentSpec) -> None:
    """Refuse, before anything is queued, a spec with a method or a stage no executor runs."""
    for method in spec.methods.chosen():
        if method not in EXECUTORS:
            raise ConfigError(f"method {method} is not runnable yet (runnable now: "
                              f"{', '.join(EXECUTORS)}); drop it from the spec's methods.")
    for stage in spec.skills:
        if stage.data is not None:
            raise ConfigError(f"skill {stage.name!r} is given as data, which experiment runs do "
                              "not register yet; add it with `skillstore skill add` and name "
                              "it instead.")
        if stage.method != "sft":
            raise ConfigError(f"skill {stage.name!r} learns by {stage.method}; experiment runs "
                              "train sft stages only yet; use method sft for it.")


def run_inputs(session: Session, store, run_id: int) -> RunInputs:
    """A run's spec, base folder, skills' rows and suites, read from the catalog."""
    run = get_run(session, run_id)
    experiment = session.get(Experiment, run.experiment_id)
    spec = parse_spec(experiment.spec, f"experiment {experiment.id}'s spec")
    skills = [get_skill(session, stage.name) for stage in spec.skills]
    return RunInputs(run_id=run.id, method=run.method, seed=run.seed, spec=spec,
                     base_dir=session.get(BaseCheckpoint, experiment.base_id).uri,
                     stages=skill_stages(store, skills), suites=[skill_suite(s) for s in skills])


def execute(inputs: RunInputs, check: Check) -> dict:
    """Run the method's executor; the result records how long it took."""
    started = time.perf_counter()
    result = EXECUTORS[inputs.method].execute(inputs, check)
    return {**result, "method": inputs.method, "seed": inputs.seed,
            "seconds": round(time.perf_counter() - started, 3)}
