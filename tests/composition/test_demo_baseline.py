"""The demo's naive sequential baseline is scored by lm-eval on the skills' suites, the way the
routed states are, not by the trainer's own exact match."""

from __future__ import annotations

import pytest

from skillstore.evaluation.cache import Suite, cache_version
from skillstore.evaluation.runner import TaskResult, run_tasks
from skillstore.evaluation.scores import model_score
from skillstore.experiments.sequential import sequential_scores
from skillstore.models import load_causal_lm
from skillstore.training.baselines import Stage
from skillstore.training.sft import SFTConfig

from .llsuites import ROWS, write_ll_suites

QUICK = SFTConfig(max_steps=2, batch_size=2, eval_every=1, lr=1e-2)


@pytest.fixture
def ll_suites(tmp_path) -> list[Suite]:
    return write_ll_suites(tmp_path)


def stages() -> list[Stage]:
    return [Stage(name, rows, rows[:2], []) for name, rows in ROWS.items()]


def test_every_cell_is_the_lm_eval_runners_headline_on_that_stages_model(tiny_world, ll_suites):
    """Each stage's model is scored once per suite through the runner, at the sample limit,
    and the cell is the runner's headline metric, not anything the trainer measured."""
    calls = []

    def runner(model, tokenizer, tasks, *, include_path, batch_size, limit):
        calls.append((tuple(tasks), include_path, limit, model.lm_head.weight.sum().item()))
        value = len(calls) / 10
        return [TaskResult(tasks[0], "acc", value, 0.01, 3),
                TaskResult(tasks[0], "perplexity", 99.0, None, 3)]

    model, tok = load_causal_lm(tiny_world.base_dir)
    scores = sequential_scores(model, tok, stages(), ll_suites, QUICK, limit=3, runner=runner)
    assert [[s.value for s in row] for row in scores] == [[0.1, 0.2], [0.3, 0.4]]
    assert [c[:3] for c in calls] == [(("t_alpha",), ll_suites[0].include_path, 3),
                                      (("t_beta",), ll_suites[1].include_path, 3)] * 2
    assert calls[0][3] != calls[2][3]  # the second stage scored the model trained further
    assert scores[0][0].version == cache_version(ll_suites[0], 3)  # the routed states' version


def test_the_baselines_last_row_equals_run_tasks_on_the_final_checkpoint(tiny_world, ll_suites):
    model, tok = load_causal_lm(tiny_world.base_dir)
    scores = sequential_scores(model, tok, stages(), ll_suites, QUICK, batch_size=4)
    for suite, cell in zip(ll_suites, scores[-1], strict=True):
        rows = run_tasks(model, tok, list(suite.tasks), include_path=suite.include_path,
                         batch_size=4)
        (acc,) = [r for r in rows if r.metric == "acc"]
        assert cell.value == pytest.approx(acc.value) and cell.n == acc.n == len(ROWS[suite.name])
        assert model_score(model, tok, suite, batch_size=4).value == pytest.approx(acc.value)
