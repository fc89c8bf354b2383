"""lm-eval on an in-memory state, result rows in the eval table, the cache that avoids reruns."""

from __future__ import annotations

import json
import os
from contextlib import contextmanager

import pytest
import torch

from skillstore.catalog import eval_results
from skillstore.curriculum.lmeval import write_task_yaml
from skillstore.evaluation.cache import Suite, evaluate_state
from skillstore.evaluation.runner import run_tasks
from skillstore.evaluation.scores import suite_scores
from skillstore.evaluation.stats import wilson_interval
from skillstore.models import load_causal_lm
from skillstore.states import base_state, extend_state, load_view, materialise

from .conftest import make_base, make_pack


def write_suite(root, name, rows, generate=True):
    """A one-task suite over local JSONL: the curriculum's generate_until YAML, or a quicker
    loglikelihood one."""
    data = root / name / "test.jsonl"
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    if generate:
        write_task_yaml(root / "tasks", f"t_{name}", {"test": data})
    else:
        (root / "tasks").mkdir(exist_ok=True)
        (root / "tasks" / f"t_{name}.yaml").write_text(
            LL_YAML.format(data=data).replace("task: t_ll", f"task: t_{name}"))
    return Suite(name, root / "tasks", (f"t_{name}",),
                 headline_metric="exact_match" if generate else "acc")


ROWS = [{"prompt": f"copy {w}: ", "answer": w} for w in ("ab", "cd", "ef", "gh")]


@pytest.fixture
def suites(tmp_path):
    return [write_suite(tmp_path, "alpha", ROWS), write_suite(tmp_path, "general", ROWS[:2])]


@pytest.fixture
def quick_suites(tmp_path):
    return [write_suite(tmp_path, "alpha", ROWS, False),
            write_suite(tmp_path, "general", ROWS[:2], False)]


class CountingRunner:
    def __init__(self):
        self.calls: list[tuple[str, ...]] = []

    def __call__(self, model, tokenizer, tasks, **kw):
        self.calls.append(tuple(tasks))
        return run_tasks(model, tokenizer, tasks, **kw)


def test_lm_eval_run_on_an_in_memory_model_gives_rows(tiny_world, suites):
    model, tok = load_causal_lm(tiny_world.base_dir)
    rows = run_tasks(model, tok, ["t_alpha"], include_path=suites[0].include_path, batch_size=4)
    (row,) = [r for r in rows if r.metric == "exact_match"]
    assert row.task == "t_alpha" and row.n == 4 and 0.0 <= row.value <= 1.0
    assert row.stderr is not None


def test_an_evaluation_outside_a_checkout_runs_no_environment_probes(tiny_world, quick_suites,
                                                                      tmp_path, monkeypatch,
                                                                      capfd):
    """lm-eval ends each evaluation by probing the environment (torch's collect_env, `git
    describe` in the working folder, which prints git's error outside a checkout); the runner
    leaves that out, and puts lm-eval's functions back after."""
    from lm_eval import evaluator

    probes = (evaluator.add_env_info, evaluator.get_git_commit_hash)
    model, tok = load_causal_lm(tiny_world.base_dir)
    outside = tmp_path / "not-a-checkout"
    outside.mkdir()
    monkeypatch.chdir(outside)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))  # git looks no higher
    rows = run_tasks(model, tok, ["t_alpha"], include_path=quick_suites[0].include_path)
    assert "acc" in {r.metric for r in rows}
    assert "not a git repository" not in capfd.readouterr().err
    assert (evaluator.add_env_info, evaluator.get_git_commit_hash) == probes


def test_cache_hits_never_rerun_and_new_versions_do(tiny_world, quick_suites, catalog, tmp_path):
    suites = quick_suites
    model, tok = load_causal_lm(tiny_world.base_dir)
    runner, loads = CountingRunner(), []

    @contextmanager
    def load(suite):
        loads.append(suite.name)
        yield model, tok

    with catalog.session() as s:
        base = make_base(s, fingerprint=model.skillstore_fingerprint, uri=str(tiny_world.base_dir))
        state = base_state(s, base)
        first = evaluate_state(s, state, suites, load, runner=runner, batch_size=4)
        assert runner.calls == [("t_alpha",), ("t_general",)]
        second = evaluate_state(s, state, suites, load, runner=runner, batch_size=4)
        # nothing rerun, nothing loaded
        assert len(runner.calls) == 2 and loads == ["alpha", "general"]
        assert [(r.id, r.value) for r in second] == [(r.id, r.value) for r in first]
        stored = eval_results(s, state.id, suite="alpha")
        assert {r.metric for r in stored} == {"acc", "perplexity"} and stored[0].n == 4
        score = suite_scores(s, state.id, suites)["alpha"]
        assert (score.value, score.n) == (next(r.value for r in stored if r.metric == "acc"), 4)

        # A different state is a different cache key ...
        pack = make_pack(s, base, "alpha")
        other = extend_state(s, base, state, pack)
        evaluate_state(s, other, suites[:1], load, runner=runner, batch_size=4)
        assert runner.calls[-1] == ("t_alpha",) and len(runner.calls) == 3

    # ... and so is an edited suite: its version changes and only that suite reruns.
    old = suites[0].version
    data = tmp_path / "alpha" / "test.jsonl"
    data.write_text(data.read_text() + json.dumps({"prompt": "copy ij: ", "answer": "ij"}) + "\n")
    edited = [Suite(x.name, x.include_path, x.tasks) for x in suites]
    assert edited[0].version != old and edited[1].version == suites[1].version
    with catalog.session() as s:
        state = base_state(s, base)
        evaluate_state(s, state, edited, load, runner=runner, batch_size=4)
        assert runner.calls[-1] == ("t_alpha",) and len(runner.calls) == 4
        assert {r.n for r in eval_results(s, state.id, suite="alpha")} == {4, 5}


MC_YAML = """task: t_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: "{data}"
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{prompt}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def mc_suite(root, n=30):
    """A multiple-choice task (two answers, the right one alternating) that the tiny model gets
    partly right: a proportion strictly between 0 and 1."""
    data = root / "mc.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"pick {i}: ", "choices": ["ab", "xyz"],
                                        "label": i % 2}) + "\n" for i in range(n)))
    (root / "tasks").mkdir(exist_ok=True)
    (root / "tasks" / "t_mc.yaml").write_text(MC_YAML.format(data=data))
    return Suite("mc", root / "tasks", ("t_mc",), headline_metric="acc")


def test_a_limited_run_has_a_nonzero_stderr_from_its_per_sample_scores(tiny_world, tmp_path):
    """With a sample limit lm-eval computes no stderr (the old rows said 0.80 +- 0.0); the
    runner computes it from the per-sample outcomes."""
    suite = mc_suite(tmp_path)
    model, tok = load_causal_lm(tiny_world.base_dir)
    (row,) = run_tasks(model, tok, ["t_mc"], include_path=suite.include_path, batch_size=8,
                       limit=20)
    assert row.metric == "acc" and row.n == 20 and 0.0 < row.value < 1.0
    assert row.samples is not None and sorted(row.samples, key=int) == [str(i) for i in range(20)]
    assert sum(row.samples.values()) / 20 == pytest.approx(row.value)
    assert row.stderr == pytest.approx((row.value * (1 - row.value) / 20) ** 0.5) and row.stderr > 0


def test_per_sample_scores_are_stored_once_and_paired_by_doc_id(tiny_world, catalog, tmp_path):
    from skillstore.catalog.gc import referenced_digests
    from skillstore.evaluation.cache import read_samples

    suite = mc_suite(tmp_path)
    model, tok = load_causal_lm(tiny_world.base_dir)
    runner = CountingRunner()

    @contextmanager
    def load(_suite):
        yield model, tok

    with catalog.session() as s:
        base = make_base(s, fingerprint=model.skillstore_fingerprint, uri=str(tiny_world.base_dir))
        state = base_state(s, base)
        (row,) = evaluate_state(s, state, [suite], load, runner=runner, batch_size=8, limit=20,
                                blobs=catalog.blobs)
        stored = read_samples(catalog.blobs, row.samples_digest)
        assert len(stored) == row.n == 20 and row.stderr > 0
        (again,) = evaluate_state(s, state, [suite], load, runner=runner, batch_size=8,
                                  limit=20, blobs=catalog.blobs)
        assert runner.calls == [("t_mc",)] and again.samples_digest == row.samples_digest
        assert row.samples_digest in referenced_digests(s)  # `skillstore gc` keeps it
        score = suite_scores(s, state.id, [suite], limit=20, blobs=catalog.blobs)["mc"]
        assert score.samples == stored and score.n == 20 and score.metric == "acc"
        right = round(score.value * 20)
        assert score.interval == wilson_interval(right, 20)  # every score carries n and interval
        assert suite_scores(s, state.id, [suite], limit=20)["mc"].samples is None


LL_YAML = """task: t_ll
dataset_path: json
dataset_kwargs:
  data_files:
    test: "{data}"
test_split: test
output_type: loglikelihood
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{answer}}}}"
target_delimiter: ""
metric_list:
  - metric: perplexity
    aggregation: perplexity
    higher_is_better: false
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def test_state_evaluation_matches_the_lm_eval_cli_on_the_exported_model(tiny_world, catalog,
                                                                         tmp_path):
    """The in-memory grafted state scores what `lm_eval --model hf` scores on the merged export."""
    import subprocess
    import sys

    data = tmp_path / "ll.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"copy {w}: ", "answer": w}) + "\n"
                            for w in ("ab", "cd", "xyz", "q")))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "t_ll.yaml").write_text(LL_YAML.format(data=data))
    model, tok = load_causal_lm(tiny_world.base_dir, dtype=torch.float32)
    base_ppl = next(r.value for r in run_tasks(model, tok, ["t_ll"], include_path=tasks)
                    if r.metric == "perplexity")
    with catalog.session() as s:
        base = make_base(s, fingerprint=model.skillstore_fingerprint, uri=str(tiny_world.base_dir))
        pack = make_pack(s, base, "alpha",
                         blob_digest=catalog.blobs.put_file(tiny_world.packs["alpha"]))
        view = load_view(s, extend_state(s, base, base_state(s, base), pack))
    with materialise(model, view, catalog.blobs) as grafted:
        ours = {r.metric: r.value
                for r in run_tasks(grafted, tok, ["t_ll"], include_path=tasks, batch_size=1)}
        grafted.save_pretrained(tmp_path / "merged")
        tok.save_pretrained(tmp_path / "merged")
    assert ours["perplexity"] != pytest.approx(base_ppl, rel=1e-4)  # the pack changed the model
    out = tmp_path / "cli"
    subprocess.run([sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args",
                    f"pretrained={tmp_path / 'merged'},dtype=float32", "--device", "cpu",
                    "--tasks", "t_ll", "--include_path", str(tasks),
                    "--batch_size", "1", "--output_path", str(out)],
                   check=True, capture_output=True,
                   env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    (result_file,) = out.rglob("results_*.json")
    cli = json.loads(result_file.read_text())["results"]["t_ll"]
    assert cli["perplexity,none"] == pytest.approx(ours["perplexity"], rel=1e-5)
    assert cli["acc,none"] == pytest.approx(ours["acc"])


def test_tag_routed_state_evaluates_each_suite_with_its_own_pack(tiny_world, catalog, tmp_path):
    """state_loader puts the skill's pack in front of its suite and no pack in front of general."""
    from skillstore.catalog import get_or_create_state
    from skillstore.evaluation.loader import state_loader
    from skillstore.packs.format import read_pack
    from skillstore.packs.graft import grafted

    data = tmp_path / "ll.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"copy {w}: ", "answer": w}) + "\n"
                            for w in ("ab", "xyz")))
    for name in ("alpha", "general"):
        (tmp_path / name).mkdir()
        (tmp_path / name / f"t_{name}.yaml").write_text(
            LL_YAML.format(data=data).replace("task: t_ll", f"task: t_{name}"))
    suites = [Suite("alpha", tmp_path / "alpha", ("t_alpha",)),
              Suite("general", tmp_path / "general", ("t_general",))]
    model, tok = load_causal_lm(tiny_world.base_dir, dtype=torch.float32)

    def ppl(m, suite):
        return next(r.value
                    for r in run_tasks(m, tok, list(suite.tasks), include_path=suite.include_path)
                    if r.metric == "perplexity")

    with grafted(model, read_pack(tiny_world.packs["alpha"])):
        want_alpha = ppl(model, suites[0])
    want_general = ppl(model, suites[1])
    with catalog.session() as s:
        base = make_base(s, fingerprint=model.skillstore_fingerprint, uri=str(tiny_world.base_dir))
        packs = [make_pack(s, base, k, blob_digest=catalog.blobs.put_file(p))
                 for k, p in tiny_world.packs.items()]
        state = get_or_create_state(s, base=base, packs=[(p, 1.0) for p in packs], router="tag")
        rows = evaluate_state(s, state, suites,
                              state_loader(model, tok, load_view(s, state), catalog.blobs))
    got = {r.suite: r.value for r in rows if r.metric == "perplexity"}
    assert got["alpha"] == pytest.approx(want_alpha, rel=1e-4)
    assert got["general"] == pytest.approx(want_general, rel=1e-4)
    assert want_alpha != pytest.approx(want_general, rel=1e-4)
