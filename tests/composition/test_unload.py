"""Unloading a skill by hand (`pack retire|reject|promote`, `state unload`) from a learned head:
the new head has a router for its packs, materialises and evaluates."""

from __future__ import annotations

import gc
import importlib
import json
import sys
import weakref

import pytest
import torch
from typer.testing import CliRunner

from skillstore.cli import app
from skillstore.models import load_causal_lm
from skillstore.packs.format import read_pack
from skillstore.packs.graft import grafted
from skillstore.routing import NONE_CLASS, load_router

from .conftest import make_base, make_pack
from .test_eval_cache import LL_YAML, write_suite
from .tinymodel import perturbed_copy, save, tiny_tokenizer

STEMS = {"alpha": "copy {}: ", "beta": "reverse {} = ", "gamma": "count {} ? "}
WORDS = ("ab", "cde", "xy", "mno", "pq", "rst")


@pytest.fixture(scope="module")
def packs3(tiny_world, tmp_path_factory) -> dict:
    """alpha and beta of the tiny world, and a third pack (gamma) on other weights."""
    from skillstore.packs.compress import compress_checkpoint

    root = tmp_path_factory.mktemp("gamma")
    model, _ = load_causal_lm(tiny_world.base_dir, dtype=torch.float32)
    names = ("model.layers.0.self_attn.k_proj.weight", "model.layers.1.mlp.gate_proj.weight")
    tuned = save(perturbed_copy(model, 30, names), tiny_tokenizer(), root / "tuned_gamma")
    gamma = compress_checkpoint(tiny_world.base_dir, tuned, "lossless",
                                root / "gamma.safetensors").path
    return {**tiny_world.packs, "gamma": gamma}


@pytest.fixture
def world(catalog, tiny_world, packs3, tmp_path):
    """A workspace whose base's head is a learned-router state of alpha, beta and gamma (all
    promoted), each skill with training data; returns the catalog."""
    from skillstore.catalog import advance_head, get_skill, set_pack_status
    from skillstore.fingerprint import fingerprint_checkpoint
    from skillstore.states import attach_router, fuse_packs, router_prompts

    with catalog.session() as s:
        base = make_base(s, fingerprint=fingerprint_checkpoint(tiny_world.base_dir),
                         uri=str(tiny_world.base_dir))
        rows = []
        for skill, path in packs3.items():
            rows.append(make_pack(s, base, skill, blob_digest=catalog.blobs.put_file(path),
                                  size_bytes=path.stat().st_size))
            data = tmp_path / "data" / skill / "train.jsonl"
            data.parent.mkdir(parents=True)
            lines = "".join(json.dumps({"prompt": STEMS[skill].format(w), "answer": w}) + "\n"
                            for w in WORDS)
            data.write_text(lines)
            data.with_name("validation.jsonl").write_text(lines)  # every row trains the router
            get_skill(s, skill).data_uri = str(data)
            set_pack_status(s, rows[-1], "promoted", reason="setup", actor="test")
        fused = fuse_packs(s, catalog.blobs, rows, "learned")
        model, tok = load_causal_lm(tiny_world.base_dir)
        routed = attach_router(s, catalog.blobs, fused, model, tok,
                               router_prompts(s, catalog.blobs, rows))
        advance_head(s, base.id, routed.id, expected_version=None)
    return catalog


def head(s, ref="alpha@v1"):
    from skillstore.catalog import current_head, get_pack, get_state

    row = current_head(s, get_pack(s, ref).base_id)
    return get_state(s, row.state_id), row.version


def router_classes(catalog, state) -> list[str]:
    return load_router(catalog.blobs.local_path(state.router_blob_digest)).classes


def run(*args):
    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


def test_retiring_from_a_learned_head_retrains_its_router_and_the_state_evaluates(
        world, packs3, tiny_world, tmp_path, monkeypatch):
    from skillstore.catalog import eval_results, get_pack, promotions_of
    from skillstore.evaluation import evaluate_state, state_loader
    from skillstore.states import load_view, materialise

    with world.session() as s:
        before, version = head(s)
    run("pack", "retire", "beta@v1", "--reason", "superseded")
    with world.session() as s:
        state, new_version = head(s)
        view = load_view(s, state)
        audit = promotions_of(s, get_pack(s, "beta@v1").id)[-1]
    assert new_version == version + 1 and state.parent_id == before.id
    assert view.skills == ["alpha", "gamma"] and state.router == "learned"
    # the bug: a learned state without its router file, which no later job could materialise
    assert state.router_blob_digest and world.blobs.exists(state.router_blob_digest)
    assert (audit.to_status.value, audit.state_id) == ("retired", state.id)
    assert audit.reason == "manual: superseded; learned router retrained for 2 packs"
    assert router_classes(world, state) == ["alpha", "gamma"]
    assert state.router_config["train_accuracy"] == 1.0

    model, tok = load_causal_lm(tiny_world.base_dir, dtype=torch.float32)
    prompts = {skill: STEMS[skill].format("ab") for skill in ("alpha", "gamma")}
    grafted_logits = {}
    for skill, prompt in prompts.items():
        with grafted(model, read_pack(packs3[skill])):
            grafted_logits[skill] = model(**tok(prompt, return_tensors="pt")).logits
    module = importlib.import_module("skillstore.states.materialise")
    loaded = []
    monkeypatch.setattr(module, "read_pack",
                        lambda path, read=module.read_pack: loaded.append(weakref.ref(
                            pack := read(path))) or pack)
    with torch.no_grad(), materialise(model, view, world.blobs) as routed:
        gc.collect()  # the hooks hold the deltas: the pack files are not kept while serving
        assert len(loaded) == 2 and all(ref() is None for ref in loaded)
        for skill, prompt in prompts.items():  # each input gets its own pack, and only it
            torch.testing.assert_close(routed(**tok(prompt, return_tensors="pt")).logits,
                                       grafted_logits[skill], atol=1e-4, rtol=1e-4)

    suites = [write_suite(tmp_path / "suites", name, [{"prompt": prompts[name], "answer": "ab"},
                                                      {"prompt": prompts[name], "answer": "xy"}],
                          generate=False) for name in ("alpha", "gamma")]
    with world.session() as s:
        state, _ = head(s)
        evaluate_state(s, state, suites, state_loader(model, tok, view, world.blobs),
                       batch_size=2, limit=2)
        rows = eval_results(s, state.id)
    assert {(r.suite, r.metric, r.n) for r in rows} == {
        (name, metric, 2) for name in ("alpha", "gamma") for metric in ("acc", "perplexity")}


def test_unloading_to_one_pack_grafts_and_to_none_is_the_plain_base(world):
    from skillstore.catalog import get_pack
    from skillstore.states import base_state, manual_override

    def override(ref, action):
        with world.session() as s:
            audit = manual_override(s, world.blobs, get_pack(s, ref), action, reason="test",
                                    actor="test")
            state, _ = head(s)
            return audit.reason, audit.state_id, state

    reason, state_id, two = override("beta@v1", "retire")
    assert state_id == two.id and two.router == "learned" and two.router_blob_digest
    # promoting by hand onto a learned head trains its router too
    reason, _, three = override("beta@v1", "promote")
    assert three.router == "learned" and three.router_blob_digest not in (
        None, two.router_blob_digest)
    assert router_classes(world, three) == ["alpha", "gamma", "beta"]
    override("beta@v1", "retire")
    reason, _, one = override("gamma@v1", "reject")
    assert (one.router, one.router_blob_digest, len(one.members)) == ("none", None, 1)
    assert "router none" in reason
    reason, _, empty = override("alpha@v1", "retire")
    with world.session() as s:
        plain = base_state(s, get_pack(s, "alpha@v1").base)
        assert empty.id == plain.id and not empty.members and empty.router == "none"
    assert "plain base" in reason


def test_a_router_that_cannot_be_trained_leaves_the_head_and_the_pack_alone(world):
    from skillstore.catalog import get_pack, get_skill
    from skillstore.errors import ConfigError
    from skillstore.states import manual_override

    with world.session() as s:
        get_skill(s, "gamma").data_uri = None
        before = head(s)
    with pytest.raises(ConfigError, match="Skill 'gamma' has no training data to route on"):
        with world.session() as s:
            manual_override(s, world.blobs, get_pack(s, "beta@v1"), "retire", reason="x",
                            actor="test")
    with world.session() as s:
        after = head(s)
        assert (after[0].id, after[1]) == (before[0].id, before[1])
        assert get_pack(s, "beta@v1").status.value == "promoted"


def test_state_unload_keeps_the_general_class_and_errors_are_one_line(world, tmp_path,
                                                                      monkeypatch, capsys):
    """`state unload` is `pack retire`; with the general suite beside the skills' task YAML, the
    retrained router keeps its no-pack class."""
    from skillstore.catalog import get_skill
    from skillstore.cli import main

    data = tmp_path / "general.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"next letter: {c} =", "answer": c}) + "\n"
                            for c in "abcdef"))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    for task in ("skillstore_alpha", "skillstore_gamma", "skillstore_general"):
        (tasks / f"{task}.yaml").write_text(
            LL_YAML.format(data=data).replace("task: t_ll", f"task: {task}"))
    with world.session() as s:
        for skill in ("alpha", "gamma"):
            get_skill(s, skill).suite = str(tasks / f"skillstore_{skill}.yaml")

    assert "retire" in run("state", "unload", "--help")
    doc = json.loads(run("state", "unload", "beta@v1", "--reason", "not needed", "--json"))
    with world.session() as s:
        state, _ = head(s)
    assert doc["state_id"] == state.id and doc["to"] == "retired"
    assert doc["reason"].startswith("manual: not needed") and "router retrained" in doc["reason"]
    assert router_classes(world, state) == ["alpha", "gamma", NONE_CLASS]

    missing = CliRunner().invoke(app, ["state", "unload", "alpha@v1"])
    assert missing.exit_code == 2 and "--reason" in missing.output
    monkeypatch.setattr(sys, "argv", ["skillstore", "state", "unload", "delta@v1", "--reason", "x"])
    with pytest.raises(SystemExit) as exit_:
        main()
    err = capsys.readouterr().err
    assert exit_.value.code == 1 and err.startswith("error: No skill named 'delta'"), err
    assert err.count("\n") == 1, err
