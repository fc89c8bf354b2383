"""The gate end to end on real packs: judge (evaluate, decide, report), record, and the eval cache."""

from __future__ import annotations

import json

import sqlalchemy as sa
import torch

from skillstore.catalog import EvalResult, current_state, get_pack, promotions_of
from skillstore.catalog.schema import PackStatus
from skillstore.gate import GatePolicy, gate_pack, make_judge
from skillstore.models import load_causal_lm

from .conftest import make_base, make_pack
from .test_eval_cache import LL_YAML


def test_packs_pass_the_gate_in_sequence_and_nothing_is_evaluated_twice(tiny_world, catalog, tmp_path, monkeypatch):
    import lm_eval.evaluator as evaluator

    calls = []
    real = evaluator.simple_evaluate
    monkeypatch.setattr(evaluator, "simple_evaluate",
                        lambda *a, **kw: calls.append(tuple(kw["tasks"])) or real(*a, **kw))
    data = tmp_path / "ll.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"copy {w}: ", "answer": w}) + "\n" for w in ("ab", "xyz")))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    for name in ("t_alpha", "t_beta", "t_general"):
        (tasks / f"{name}.yaml").write_text(LL_YAML.format(data=data).replace("task: t_ll", f"task: {name}"))
    model, tok = load_causal_lm(tiny_world.base_dir, dtype=torch.float32)
    lenient = GatePolicy(min_gain=0.0, max_drop=1.0, max_general_drop=1.0)
    with catalog.session() as s:
        base = make_base(s, fingerprint=model.skillstore_fingerprint, uri=str(tiny_world.base_dir))
        for skill, path in tiny_world.packs.items():
            pack = make_pack(s, base, skill, blob_digest=catalog.blobs.put_file(path))
            pack.skill.suite = f"t_{skill}"
    for skill in ("alpha", "beta"):
        with catalog.session() as s:
            pack = get_pack(s, f"{skill}@v1")
            judge = make_judge(catalog.blobs, model, tok, pack, tasks_dir=tasks, policy=lenient,
                               general_task="t_general", router="tag")
            outcome = gate_pack(s, pack, judge)
            assert outcome.decision.promote and outcome.attempts == 1
    with catalog.session() as s:
        head = current_state(s, base.id)
        assert [m.pack_id for m in head.members] == [get_pack(s, "alpha@v1").id, get_pack(s, "beta@v1").id]
        assert head.router == "tag"
        groups = s.execute(sa.select(EvalResult.state_id, EvalResult.suite).distinct()).all()
        audit = promotions_of(s, get_pack(s, "beta@v1").id)[-1]
    # base, +alpha: 2 suites each; +alpha again (cached) and +alpha+beta: only beta is new, then 3
    assert len(calls) == len(groups) == 2 + 2 + 1 + 3
    assert audit.to_status == PackStatus.promoted and audit.report_ref
    page = catalog.blobs.get_bytes(audit.report_ref).decode()
    assert "Decision: promoted" in page and "data:image/png;base64," in page


def test_the_gate_rejects_a_pack_that_gains_too_little(tiny_world, catalog, tmp_path):
    data = tmp_path / "ll.jsonl"
    data.write_text(json.dumps({"prompt": "copy ab: ", "answer": "ab"}) + "\n")
    (tmp_path / "t_alpha.yaml").write_text(LL_YAML.format(data=data).replace("task: t_ll", "task: t_alpha"))
    model, tok = load_causal_lm(tiny_world.base_dir, dtype=torch.float32)
    with catalog.session() as s:
        base = make_base(s, fingerprint=model.skillstore_fingerprint, uri=str(tiny_world.base_dir))
        pack = make_pack(s, base, "alpha", blob_digest=catalog.blobs.put_file(tiny_world.packs["alpha"]))
        pack.skill.suite = "t_alpha"
        judge = make_judge(catalog.blobs, model, tok, pack, tasks_dir=tmp_path, general_task=None,
                           policy=GatePolicy(min_gain=1.0))
        outcome = gate_pack(s, pack, judge)
    assert not outcome.decision.promote
    with catalog.session() as s:
        assert get_pack(s, "alpha@v1").status == PackStatus.rejected
        assert current_state(s, base.id) is None or not current_state(s, base.id).members
        assert "too little gain" in promotions_of(s, pack.id)[-1].reason
