"""Skills learned one after another and scored by lm-eval after each: the sequential baselines'
loop, shared by `skillstore demo` (its naive baseline) and the experiment runs."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..catalog.models import Skill
from ..evaluation.cache import Runner, Suite
from ..evaluation.runner import run_tasks
from ..evaluation.scores import Score, model_score
from ..skilldata import skill_rows
from ..training.baselines import Stage, fit_stage
from ..training.sft import Progress, SFTConfig, TrainResult

EVAL_BATCH = 32
FP16_BYTES = 2  # a dense delta stored at half precision


def skill_stages(store, skills: Sequence[Skill]) -> list[Stage]:
    """One stage per skill, in order, with its registered training and validation rows; the
    test rows stay with the skill's suite, which scores every stage."""
    stages = []
    for skill in skills:
        rows, val = skill_rows(store, skill)
        stages.append(Stage(skill.name, rows, val, []))
    return stages


def sequential_scores(model, tokenizer, stages: Sequence[Stage], suites: Sequence[Suite],
                      config: SFTConfig, *, limit: int | None = None,
                      batch_size: int = EVAL_BATCH, runner: Runner = run_tasks,
                      progress: Progress | None = None,
                      after_stage: Callable[[int, TrainResult], None] | None = None
                      ) -> list[list[Score]]:
    """Sequential full fine-tuning: each stage trained on top of the previous model (in place,
    `training.baselines.fit_stage`: SFT, then DPO for a dpo stage), then the model scored by
    lm-eval on every suite; S[i][j] is suite j after stage i. ``after_stage(i, fit)`` is called
    once stage i is trained, before it is scored."""
    matrix = []
    for i, stage in enumerate(stages):
        sub = ((lambda s, f, i=i, n=stage.name: progress(f"{n}:{s}", (i + f) / len(stages)))
               if progress else None)
        fit = fit_stage(model, tokenizer, stage, config, sub)
        if after_stage is not None:
            after_stage(i, fit)
        matrix.append(suite_scores(model, tokenizer, suites, limit=limit,
                                   batch_size=batch_size, runner=runner))
    return matrix


def suite_scores(model, tokenizer, suites: Sequence[Suite], *, limit: int | None = None,
                 batch_size: int = EVAL_BATCH, runner: Runner = run_tasks) -> list[Score]:
    """One row of the matrix: the model's lm-eval headline score on every suite."""
    return [model_score(model, tokenizer, s, limit=limit, batch_size=batch_size, runner=runner)
            for s in suites]


class ChangedParams:
    """How many parameters of a model changed since the last call: the dense delta's size.

    A copy of every floating-point parameter is kept on the CPU between calls; shared (tied)
    parameters are counted once.
    """

    def __init__(self, model):
        self.model = model
        self._before = self._snapshot()

    def _snapshot(self) -> dict:
        return {name: p.detach().to("cpu", copy=True)
                for name, p in self.model.named_parameters() if p.is_floating_point()}

    def step(self) -> int:
        """Parameters that differ from the last snapshot; the snapshot moves to now."""
        now = self._snapshot()
        changed = sum(int((now[k] != self._before[k]).sum()) for k in now)
        self._before = now
        return changed
