"""The runnable methods, each through the executor contract on a tiny base and real lm-eval
suites; every method a spec can name runs, and the stages that cannot run yet are refused."""

from __future__ import annotations

import dataclasses

import pytest

from skillstore.blobstore import BlobStore
from skillstore.evaluation.cache import Suite
from skillstore.experiments import parse_spec
from skillstore.experiments.catalog import RunCancelled
from skillstore.experiments.methods import EXECUTORS, RunInputs, check_runnable, execute
from skillstore.experiments.spec import METHODS
from skillstore.training.baselines import Stage, replay_stages
from tests.composition.llsuites import ROWS, write_ll_suites

from .conftest import spec_doc

QUICK = {"max_steps": 2, "batch_size": 2, "eval_every": 1, "lr": 1e-2}


@pytest.fixture
def ll_suites(tmp_path) -> list[Suite]:
    return write_ll_suites(tmp_path)


def inputs(method: str, base_dir, suites, **settings) -> RunInputs:
    spec = parse_spec(spec_doc(skills=[{"name": n} for n in ROWS], methods={method: settings},
                               seeds=[3], eval_limit=10, train=QUICK))
    stages = [Stage(n, rows, rows[:2], []) for n, rows in ROWS.items()]
    return RunInputs(1, method, 3, spec, str(base_dir), stages, suites)


SWEEP = {"ranks": [2], "lrs": [1e-2]}  # one point: the sweep's own tests try several
SETTINGS = {"replay": {"replay": 2}, "lora_seq": SWEEP, "multi_lora": SWEEP}


@pytest.mark.parametrize("method", list(EXECUTORS))
def test_every_runnable_method_scores_every_skill_and_counts_its_bytes(method, tiny_world,
                                                                       ll_suites, tmp_path):
    seen = []
    run = inputs(method, tiny_world.base_dir, ll_suites, **SETTINGS.get(method, {}))
    run = dataclasses.replace(run, store=BlobStore(tmp_path / "blobs"))  # graft's packs
    result = execute(run, lambda stage, f: seen.append((stage, f)))
    names = list(ROWS)
    assert result["method"] == method and result["seed"] == 3 and result["skills"] == names
    matrix = result["accuracy_matrix"]
    rows = 1 if method == "joint" else len(names)  # joint has no stages to forget across
    assert len(matrix) == rows and all(len(r) == len(names) for r in matrix)
    assert all(0.0 <= v <= 1.0 for r in matrix for v in r)
    assert result["n"][-1] == [len(ROWS[n]) for n in names]
    assert result["metrics"]["average_accuracy"] == pytest.approx(sum(matrix[-1]) / len(names))
    assert (result["metrics"]["bwt"] is None) == (method == "joint")
    assert len(result["base_scores"]) == len(names)
    assert result["train"]["seed"] == 3 and result["train"]["max_steps"] == QUICK["max_steps"]
    if method == "joint":  # the sequential methods' steps over all their stages
        assert result["max_steps"] == QUICK["max_steps"] * len(names)
        assert QUICK["max_steps"] < result["steps"] <= result["max_steps"]
    for name in names:  # every stage changed weights; fp16 bytes are two per changed parameter
        assert result["changed_params"][name] > 0
        if method == "graft":  # a pack file's bytes (tests/experiments/test_graft_method.py)
            stored = {p["skill"]: p["bytes"] for p in result["packs"]}
            assert 0 < result["bytes_per_skill"][name] == stored[name]
        else:
            assert result["bytes_per_skill"][name] == 2 * result["changed_params"][name]
    assert seen and seen[-1][1] == pytest.approx(1.0)  # the run reports how far it is


def test_a_run_stops_when_its_check_says_it_was_cancelled(tiny_world, ll_suites):
    def cancelled(stage, fraction):
        raise RunCancelled(f"cancelled during {stage}")

    with pytest.raises(RunCancelled, match="cancelled during alpha"):
        execute(inputs("naive_ft", tiny_world.base_dir, ll_suites), cancelled)


def test_replay_mixes_rows_of_every_earlier_skill_into_each_stage():
    stages = [Stage(n, rows, rows[:1], []) for n, rows in ROWS.items()]
    stages.append(Stage("gamma", [{"prompt": "x", "answer": "y"}], [], []))
    mixed = replay_stages(stages, 2, seed=0)
    assert mixed[0].train == stages[0].train  # nothing earlier to replay
    assert len(mixed[1].train) == len(ROWS["beta"]) + 2
    assert sum(r in ROWS["alpha"] for r in mixed[1].train) == 2
    assert len(mixed[2].train) == 1 + 2 + 2
    assert [s.validation for s in mixed] == [s.validation for s in stages]
    # DPO pairs only a stage's own rows, never the replayed ones its checker would refuse.
    assert [s.preference_rows for s in mixed] == [s.train for s in stages]
    assert replay_stages(stages, 2, seed=0) == mixed  # seeded


def test_every_method_a_spec_can_name_is_runnable():
    assert set(EXECUTORS) == set(METHODS)
    settings = {"replay": {"replay": 2}, "ties": {"density": 0.2}, "dare_ties": {"density": 0.2}}
    check_runnable(parse_spec(spec_doc(methods={m: settings.get(m, {}) for m in METHODS})))


def test_a_dpo_stage_and_a_data_stage_are_runnable():
    check_runnable(parse_spec(spec_doc(sources=["src"], skills=[
        {"name": "arith", "data": "arith.jsonl"},
        {"name": "k", "method": "dpo", "source": "src"}])))
