"""Reused outcomes: a candidate keeps the current state's per-sample outcomes for the docs it
routes the same way, and they equal a full re-evaluation."""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import replace

import pytest
import sqlalchemy as sa
import torch

from skillstore.catalog import EvalResult, get_pack, get_state
from skillstore.catalog.models import BaseCheckpoint, Skill
from skillstore.catalog.states import get_or_create_state
from skillstore.curriculum.lmeval import write_task_yaml
from skillstore.evaluation import evaluate_state, general_suite, skill_suite, suite_scores
from skillstore.evaluation.loader import state_loader
from skillstore.evaluation.reuse import OutcomeReuse, ReuseRecord
from skillstore.evaluation.routes import disagreements
from skillstore.evaluation.runner import TaskResult
from skillstore.evaluation.suites import suite_prompts
from skillstore.gate import CandidateEvaluation, evaluate_candidate
from skillstore.models import load_causal_lm
from skillstore.routing.routers import traced_routes
from skillstore.states import base_state, load_view
from skillstore.states.service import ROUTER_PROMPTS, candidate_state

from .conftest import PACK_TENSORS, make_base, make_pack
from .tinymodel import perturbed_copy, save, tiny_llama, tiny_tokenizer

WORDS = ("ab", "xyz", "mno", "pq", "rst", "uv", "gh", "ijk", "cd", "ef", "lmn", "wx")
STEMS = {"alpha": "copy", "beta": "reverse", "general": "next letter of"}


@pytest.fixture(scope="module")
def strong_world(tmp_path_factory):
    """A tiny base, two packs strong enough to change its greedy answers, and the fine-tuned
    models the packs were made from."""
    from skillstore.packs.compress import compress_checkpoint

    root = tmp_path_factory.mktemp("reuse_world")
    tok = tiny_tokenizer()
    base = tiny_llama(tok)
    base_dir = save(base, tok, root / "base")
    packs, tuned = {}, {}
    for i, (skill, names) in enumerate(PACK_TENSORS.items()):
        tuned[skill] = perturbed_copy(base, 30 + i, names, scale=1.0)
        saved = save(tuned[skill], tok, root / f"t_{skill}")
        packs[skill] = compress_checkpoint(base_dir, saved, "lossless",
                                           root / f"{skill}.safetensors").path
    return base_dir, packs, tuned


def _first_char(model, tok, prompt: str) -> str:
    with torch.no_grad():
        logits = model(torch.tensor([tok(prompt)["input_ids"]])).logits
    return tok.decode([int(logits[0, -1].argmax())])


def zoo_of(catalog, model, tok, world, tmp_path):
    """Skills registered as the zoo registers them (task YAML path, data for the router),
    generate_until exact match of one character. Doc i's answer is the first character that
    the base, alpha's model or beta's model (in turn, by i) would say, so whether a doc is
    right depends on its route. alpha's test split also holds "reverse" prompts, which the
    candidate routes to beta."""
    base_dir, packs, tuned = world
    speakers = [model, tuned["alpha"], tuned["beta"]]
    tasks = tmp_path / "tasks"
    for name, stem in STEMS.items():
        prompts = [f"{stem} {w}: " for w in WORDS]
        if name == "alpha":
            prompts += [f"{STEMS['beta']} {w}{w}: " for w in WORDS[:4]]
        test = tmp_path / name / "test.jsonl"
        train = tmp_path / name / "train.jsonl"
        test.parent.mkdir(parents=True)
        test.write_text("".join(
            json.dumps({"prompt": p, "answer": _first_char(speakers[i % 3], tok, p)}) + "\n"
            for i, p in enumerate(prompts)))
        train.write_text("".join(json.dumps({"prompt": f"{stem} {a}{b}: ", "answer": a})
                                 + "\n" for a in "abcdefgh" for b in "ijklmnop"))
        task = "skillstore_general" if name == "general" else f"skillstore_{name}"
        write_task_yaml(tasks, task, {"train": train, "test": test}, max_gen_toks=1)
    with catalog.session() as s:
        base = make_base(s, fingerprint=model.skillstore_fingerprint, uri=str(base_dir))
        for skill, path in packs.items():
            pack = make_pack(s, base, skill, blob_digest=catalog.blobs.put_file(path))
            pack.skill.suite = str(tasks / f"skillstore_{skill}.yaml")
            pack.skill.data_uri = str(tmp_path / skill / "train.jsonl")
        return base.id


def _samples(session, blobs, state_id, suite):
    return suite_scores(session, state_id, [suite], blobs=blobs)[suite.name].samples


def test_reused_outcomes_equal_a_full_reevaluation(strong_world, catalog, tmp_path):
    model, tok = load_causal_lm(strong_world[0], dtype=torch.float32)
    base_id = zoo_of(catalog, model, tok, strong_world, tmp_path)
    blobs = catalog.blobs
    with catalog.session() as s:
        base = s.get(BaseCheckpoint, base_id)
        alpha, beta = get_pack(s, "alpha@v1"), get_pack(s, "beta@v1")
        alpha_suite = skill_suite(s.get(Skill, alpha.skill_id))
        general = general_suite(beside=[alpha_suite])
        prompts = suite_prompts(general, ROUTER_PROMPTS)
        current = candidate_state(s, blobs, base_state(s, base), alpha, model, tok,
                                  router="learned", general_prompts=prompts)
        cur_view = load_view(s, current)
        suites = [alpha_suite, skill_suite(s.get(Skill, beta.skill_id)), general]
        with traced_routes() as before_trace:  # what the current state's run routed
            evaluate_state(s, current, suites, state_loader(model, tok, cur_view, blobs),
                           batch_size=4, blobs=blobs)
        evaluation = evaluate_candidate(s, blobs, model, tok, beta, current, None,
                                        general=general, router="learned", batch_size=4)
        record = evaluation.reuse
        candidate = get_state(s, evaluation.candidate_state_id)
        cand_view = load_view(s, candidate)
        assert record.from_state_id == current.id and evaluation.earlier == ("alpha",)
        reused = record.reused["alpha"]["skillstore_alpha"]
        n_docs = len(WORDS) + 4
        # some docs kept their route and were copied; the changed ones were answered again
        assert 0 < len(reused) < n_docs
        assert record.evaluated["alpha"] == n_docs - len(reused) > 0
        assert record.evaluated["beta"] == n_docs - 4 and record.evaluated["general"] == 12
        assert set(reused) <= {str(i) for i in range(len(WORDS))}  # the "reverse" docs moved
        with_reuse = _samples(s, blobs, candidate.id, alpha_suite)

        # the same candidate, evaluated in full
        s.execute(sa.delete(EvalResult).where(EvalResult.state_id == candidate.id,
                                              EvalResult.suite == "alpha"))
        with traced_routes() as after_trace:
            evaluate_state(s, candidate, [alpha_suite],
                           state_loader(model, tok, cand_view, blobs), batch_size=4, blobs=blobs)
        full = _samples(s, blobs, candidate.id, alpha_suite)
        assert with_reuse == full
        assert 0 < sum(full.values()) < n_docs  # outcomes differ by route: equality can fail
        before = _samples(s, blobs, current.id, alpha_suite)
        assert {d: before[d] for d in reused} == {d: full[d] for d in reused}

        # the routes predicted before the runs are the ones the batched runs took
        planner = OutcomeReuse(s, blobs, model, tok, cur_view, cand_view, skills=["alpha"],
                               batch_size=4)
        planner.plan(alpha_suite, alpha_suite.tasks)
        for which, trace, routes in (("reference", before_trace, planner.reference),
                                     ("candidate", after_trace, planner.candidate)):
            differ, compared = disagreements(planner.predicted[which]["alpha"], trace, routes)
            assert differ == 0 and compared >= len(reused), which


class FakeRunner:
    """lm-eval stand-in whose first run scores every doc 1 and later runs 0, so copied and
    re-run outcomes can be told apart; records what each run was asked for."""

    def __init__(self, n_docs: int):
        self.n_docs, self.calls, self.runs = n_docs, [], 0

    def __call__(self, model, tokenizer, tasks, *, include_path, batch_size, limit=None,
                 samples=None):
        self.calls.append({t: (samples or {}).get(t) for t in tasks})
        self.runs += 1
        value = 1.0 if self.runs == 1 else 0.0  # the reference's run scores 1, later runs 0
        out = []
        for task in tasks:
            docs = (samples or {}).get(task) or range(self.n_docs)
            scores = {str(d): value for d in docs}
            out.append(TaskResult(task, "exact_match", value, 0.0, len(scores), scores))
        return out


@contextmanager
def _no_model(suite):
    yield None, None


def test_a_pack_changed_under_the_same_name_is_evaluated_again(strong_world, catalog, tmp_path):
    """Routes compare packs by content digest and scale, not by skill name."""
    model, tok = load_causal_lm(strong_world[0], dtype=torch.float32)
    base_id = zoo_of(catalog, model, tok, strong_world, tmp_path)
    blobs, n_docs = catalog.blobs, len(WORDS) + 4
    with catalog.session() as s:
        base = s.get(BaseCheckpoint, base_id)
        alpha, beta = get_pack(s, "alpha@v1"), get_pack(s, "beta@v1")
        retrained = make_pack(s, base, "alpha", blob_digest=beta.blob_digest)  # alpha v2
        alpha_suite = skill_suite(s.get(Skill, alpha.skill_id))
        current = get_or_create_state(s, base=base, packs=[(alpha, 1.0)], router="tag")
        runner = FakeRunner(n_docs)
        evaluate_state(s, current, [alpha_suite], _no_model, runner=runner, blobs=blobs)
        kept = {str(d): 1.0 for d in range(n_docs)}
        assert _samples(s, blobs, current.id, alpha_suite) == kept

        def evaluate(members):
            cand = get_or_create_state(s, base=base, packs=members, router="tag")
            plan = OutcomeReuse(s, blobs, model, tok, load_view(s, current), load_view(s, cand),
                                skills=["alpha"])
            runner.calls.clear()
            evaluate_state(s, cand, [alpha_suite], _no_model, runner=runner, blobs=blobs,
                           reuse=plan)
            return runner.calls, _samples(s, blobs, cand.id, alpha_suite), plan.reused

        # the same pack routed the same way: nothing runs, every outcome is copied
        calls, samples, reused = evaluate([(alpha, 1.0), (beta, 1.0)])
        assert calls == [] and samples == kept and len(reused["alpha"]["skillstore_alpha"]) == 16
        # another pack under the same skill name, or the same pack at another scale: all run
        for members in ([(retrained, 1.0), (beta, 1.0)], [(alpha, 0.5), (beta, 1.0)]):
            calls, samples, reused = evaluate(members)
            assert calls == [{"skillstore_alpha": None}] and reused == {}
            assert samples == {str(d): 0.0 for d in range(n_docs)}


def test_partly_changed_docs_run_with_samples_and_merge(strong_world, catalog, tmp_path):
    """Under the learned router only the docs whose route moved run (lm-eval ``samples=``);
    the merged row keeps the copied outcomes and takes the fresh ones for the moved docs."""
    model, tok = load_causal_lm(strong_world[0], dtype=torch.float32)
    base_id = zoo_of(catalog, model, tok, strong_world, tmp_path)
    blobs, n_docs = catalog.blobs, len(WORDS) + 4
    with catalog.session() as s:
        base = s.get(BaseCheckpoint, base_id)
        alpha, beta = get_pack(s, "alpha@v1"), get_pack(s, "beta@v1")
        alpha_suite = skill_suite(s.get(Skill, alpha.skill_id))
        prompts = suite_prompts(general_suite(beside=[alpha_suite]), ROUTER_PROMPTS)
        current = candidate_state(s, blobs, base_state(s, base), alpha, model, tok,
                                  router="learned", general_prompts=prompts)
        cand = candidate_state(s, blobs, current, beta, model, tok, general_prompts=prompts)
        runner = FakeRunner(n_docs)
        evaluate_state(s, current, [alpha_suite], _no_model, runner=runner, blobs=blobs)
        plan = OutcomeReuse(s, blobs, model, tok, load_view(s, current), load_view(s, cand),
                            skills=["alpha"])
        runner.calls.clear()
        evaluate_state(s, cand, [alpha_suite], _no_model, runner=runner, blobs=blobs, reuse=plan)
        (call,) = runner.calls
        moved = call["skillstore_alpha"]
        reused = plan.reused["alpha"]["skillstore_alpha"]
        assert moved and sorted(moved) == moved and set(range(len(WORDS), n_docs)) <= set(moved)
        assert sorted(map(int, reused)) == sorted(set(range(n_docs)) - set(moved))
        samples = _samples(s, blobs, cand.id, alpha_suite)
        assert samples == {str(d): 0.0 if d in moved else 1.0 for d in range(n_docs)}
        (row,) = s.scalars(sa.select(EvalResult).where(EvalResult.state_id == cand.id))
        assert row.n == n_docs and row.value == pytest.approx(len(reused) / n_docs)
        assert row.stderr > 0


def test_an_evaluation_recorded_before_reuse_still_loads():
    score = {"value": 0.5, "stderr": 0.1, "n": 4, "version": "v", "metric": "acc"}
    old = {"current_state_id": 1, "head_version": 3, "candidate_state_id": 2, "new_skill": "b",
           "earlier": ["a"], "general": ["general"], "before": {"a": score}, "after": {"a": score}}
    loaded = CandidateEvaluation.from_json(old)
    assert loaded.reuse is None and loaded.after["a"].n == 4 and loaded.earlier == ("a",)
    assert CandidateEvaluation.from_json(loaded.as_json()) == loaded
    record = ReuseRecord(1, {"a": {"t_a": ["0", "2"]}}, {"a": 2, "b": 4, "general": 4})
    new = replace(loaded, reuse=record)
    again = CandidateEvaluation.from_json(json.loads(json.dumps(new.as_json())))
    assert again == new and again.reuse.n_reused == 2 and again.reuse.n_evaluated == 10
