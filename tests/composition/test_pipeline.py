"""The gate end to end on real packs: judge (evaluate, decide, report), record, the eval cache."""

from __future__ import annotations

import json

import lm_eval.evaluator as evaluator
import pytest
import sqlalchemy as sa
import torch
from typer.testing import CliRunner

from skillstore.catalog import EvalResult, current_state, get_pack, get_state, promotions_of
from skillstore.catalog.models import BaseCheckpoint, Skill
from skillstore.catalog.schema import PackStatus
from skillstore.cli import app
from skillstore.errors import StaleEvaluationError
from skillstore.evaluation import general_suite, skill_suite
from skillstore.gate import (
    CandidateEvaluation,
    GatePolicy,
    evaluate_candidate,
    gate_pack,
    head_of,
    make_judge,
    recorded_judge,
)
from skillstore.models import load_causal_lm
from skillstore.routing import NONE_CLASS, load_router

from .conftest import make_base, make_pack
from .test_eval_cache import LL_YAML


def test_packs_pass_the_gate_in_sequence_and_nothing_is_evaluated_twice(tiny_world, catalog,
                                                                         tmp_path, monkeypatch):
    calls = []
    real = evaluator.simple_evaluate
    monkeypatch.setattr(evaluator, "simple_evaluate",
                        lambda *a, **kw: calls.append(tuple(kw["tasks"])) or real(*a, **kw))
    data = tmp_path / "ll.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"copy {w}: ", "answer": w}) + "\n"
                            for w in ("ab", "xyz")))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    for name in ("t_alpha", "t_beta", "t_general"):
        (tasks / f"{name}.yaml").write_text(
            LL_YAML.format(data=data).replace("task: t_ll", f"task: {name}"))
    model, tok = load_causal_lm(tiny_world.base_dir, dtype=torch.float32)
    lenient = GatePolicy(min_gain=-1.0, max_drop=1.0, max_general_drop=1.0)  # never blocks
    with catalog.session() as s:
        base = make_base(s, fingerprint=model.skillstore_fingerprint, uri=str(tiny_world.base_dir))
        for skill, path in tiny_world.packs.items():
            pack = make_pack(s, base, skill, blob_digest=catalog.blobs.put_file(path))
            pack.skill.suite = f"t_{skill}"
    for skill in ("alpha", "beta"):
        with catalog.session() as s:
            pack = get_pack(s, f"{skill}@v1")
            judge = make_judge(catalog.blobs, model, tok, pack, tasks_dir=tasks, policy=lenient,
                               general=general_suite("t_general", tasks_dir=tasks), router="tag")
            outcome = gate_pack(s, pack, judge)
            assert outcome.decision.promote and outcome.attempts == 1
    with catalog.session() as s:
        head = current_state(s, base.id)
        assert [m.pack_id for m in head.members] == [get_pack(s, "alpha@v1").id,
                                                     get_pack(s, "beta@v1").id]
        assert head.router == "tag"
        groups = s.execute(sa.select(EvalResult.state_id, EvalResult.suite).distinct()).all()
        audit = promotions_of(s, get_pack(s, "beta@v1").id)[-1]
    # base, +alpha: 2 suites each; +alpha again (cached) and +alpha+beta: only beta is new, then 3
    assert len(calls) == len(groups) == 2 + 2 + 1 + 3
    assert audit.to_status == PackStatus.promoted and audit.report_ref
    page = catalog.blobs.get_bytes(audit.report_ref).decode()
    assert "Decision: promoted" in page and "data:image/png;base64," in page
    assert "Gate checks" in page and "mcnemar-exact" in page  # paired, with its evidence


def test_the_gate_rejects_a_pack_that_gains_too_little(tiny_world, catalog, tmp_path):
    data = tmp_path / "ll.jsonl"
    data.write_text(json.dumps({"prompt": "copy ab: ", "answer": "ab"}) + "\n")
    (tmp_path / "t_alpha.yaml").write_text(
        LL_YAML.format(data=data).replace("task: t_ll", "task: t_alpha"))
    model, tok = load_causal_lm(tiny_world.base_dir, dtype=torch.float32)
    with catalog.session() as s:
        base = make_base(s, fingerprint=model.skillstore_fingerprint, uri=str(tiny_world.base_dir))
        pack = make_pack(s, base, "alpha",
                         blob_digest=catalog.blobs.put_file(tiny_world.packs["alpha"]))
        pack.skill.suite = "t_alpha"
        judge = make_judge(catalog.blobs, model, tok, pack, tasks_dir=tmp_path,
                           policy=GatePolicy(min_gain=1.0))
        outcome = gate_pack(s, pack, judge)
    assert not outcome.decision.promote
    with catalog.session() as s:
        assert get_pack(s, "alpha@v1").status == PackStatus.rejected
        assert current_state(s, base.id) is None or not current_state(s, base.id).members
        assert "too little gain" in promotions_of(s, pack.id)[-1].reason


def zoo_like(catalog, tiny_world, tmp_path, model):
    """Skills registered the way the zoo registers them: the suite is the path of the skill's
    task YAML, with skillstore_general.yaml beside it, and training data for the router."""
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    stems = {"alpha": "copy", "beta": "reverse", "general": "next letter of"}
    for name, stem in stems.items():
        data = tmp_path / f"{name}.jsonl"
        data.write_text("".join(json.dumps({"prompt": f"{stem} {w}: ", "answer": w}) + "\n"
                                for w in ("ab", "xyz", "mno", "pq")))
        (tasks / f"skillstore_{name}.yaml").write_text(
            LL_YAML.format(data=data).replace("task: t_ll", f"task: skillstore_{name}"))
    with catalog.session() as s:
        base = make_base(s, fingerprint=model.skillstore_fingerprint, uri=str(tiny_world.base_dir))
        for skill, path in tiny_world.packs.items():
            pack = make_pack(s, base, skill, blob_digest=catalog.blobs.put_file(path))
            pack.skill.suite = str(tasks / f"skillstore_{skill}.yaml")
            pack.skill.data_uri = str(tmp_path / f"{skill}.jsonl")
        return base.id


def test_evaluate_then_decide_on_recorded_scores_with_the_learned_router(
        tiny_world, catalog, tmp_path, monkeypatch):
    """What the pipeline's evaluate and gate steps call: evaluate_candidate records scores
    (learned router retrained per pack set), recorded_judge decides on them without a model,
    and a decision on scores measured against an old head is refused as stale."""
    model, tok = load_causal_lm(tiny_world.base_dir, dtype=torch.float32)
    base_id = zoo_like(catalog, tiny_world, tmp_path, model)
    lenient = GatePolicy(min_gain=-1.0, max_drop=1.0, max_general_drop=1.0)  # never blocks
    recorded = {}
    for skill in ("alpha", "beta"):  # both evaluated against the same (pack-less) head
        with catalog.session() as s:
            pack = get_pack(s, f"{skill}@v1")
            current, version = head_of(s, s.get(BaseCheckpoint, base_id))
            general = general_suite(beside=[skill_suite(s.get(Skill, pack.skill_id))])
            evaluation = evaluate_candidate(s, catalog.blobs, model, tok, pack, current, version,
                                            general=general, router="learned", batch_size=4)
            recorded[skill] = json.loads(json.dumps(evaluation.as_json()))  # as job_steps keeps it
    first = CandidateEvaluation.from_json(recorded["alpha"])
    assert set(first.before) == set(first.after) == {"alpha", "general"}
    assert first.general == ("general",) and first.earlier == ()
    # the recorded scores name their eval rows; the per-sample scores stay in blobs
    assert first.before["alpha"].samples is None and first.before["alpha"].metric == "acc"

    calls = []
    monkeypatch.setattr(evaluator, "simple_evaluate", lambda *a, **kw: calls.append(kw))
    with catalog.session() as s:
        pack = get_pack(s, "alpha@v1")
        outcome = gate_pack(s, pack, recorded_judge(catalog.blobs, pack, first, lenient))
    assert outcome.decision.promote and calls == []
    # the gate re-read the per-sample scores from the eval rows: every check is paired
    assert {c.test for c in outcome.decision.checks} == {"mcnemar-exact-cc", "mcnemar-exact"}
    assert {c.n for c in outcome.decision.checks} == {4}
    with catalog.session() as s:
        state = get_state(s, outcome.state_id)
        assert state.router == "learned" and state.router_config["train_accuracy"] > 0
        router = load_router(catalog.blobs.local_path(state.router_blob_digest))
        assert router.classes == ["alpha", NONE_CLASS]
        beta = get_pack(s, "beta@v1")
        late = CandidateEvaluation.from_json(recorded["beta"])
        with pytest.raises(StaleEvaluationError, match="Evaluate it again"):
            gate_pack(s, beta, recorded_judge(catalog.blobs, beta, late, lenient))
    with catalog.session() as s:
        assert get_pack(s, "beta@v1").status == PackStatus.candidate
        assert current_state(s, base_id).id == outcome.state_id

    # `skillstore state eval` resolves the same suites (no --tasks-dir) and finds them cached
    result = CliRunner().invoke(app, ["state", "eval", str(outcome.state_id), "--json"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert {r["suite"] for r in json.loads(result.stdout)} == {"alpha", "general"} and calls == []


def test_starting_from_a_state_that_routes_per_input_is_one_line(tiny_world, catalog):
    """A pack trained with every pack of a routed head in the weights would be served without
    them; a job asking for that is refused. No head: the plain base; a summing head: itself."""
    from skillstore.catalog import advance_head, current_head, get_or_create_state
    from skillstore.errors import ConfigError
    from skillstore.pipeline.request import check_start_state

    with catalog.session() as s:
        base = make_base(s, fingerprint="f" * 64, uri=str(tiny_world.base_dir))
        pack = make_pack(s, base, "alpha", blob_digest=catalog.blobs.put_file(
            tiny_world.packs["alpha"]))
        assert check_start_state(s, base) is None
        summed = get_or_create_state(s, base=base, packs=[(pack, 1.0)], router="none")
        advance_head(s, base.id, summed.id, expected_version=None)
        assert check_start_state(s, base) == summed
        routed = get_or_create_state(s, base=base, packs=[(pack, 1.0)], router="tag")
        advance_head(s, base.id, routed.id, expected_version=current_head(s, base.id).version)
        with pytest.raises(ConfigError, match=r"routes one pack per input \(router 'tag'\).*"
                                              r"--start-from base"):
            check_start_state(s, base)
