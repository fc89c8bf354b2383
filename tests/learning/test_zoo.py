"""The zoo: deterministic builders, loadable HF folders, two tokenizers, a recipe cache."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from skillstore.fingerprint import fingerprint_checkpoint
from skillstore.zoo import build_zoo, zoo_manifest
from skillstore.zoo.tokenizers import round_trips


def test_same_seed_same_weights_other_seed_other_weights(mini_zoo, make_recipe, tmp_path):
    again = build_zoo(tmp_path / "again", recipe=make_recipe())
    other = build_zoo(tmp_path / "other", recipe=make_recipe(seed=1))
    assert fingerprint_checkpoint(again.target) == fingerprint_checkpoint(mini_zoo.target)
    assert (fingerprint_checkpoint(again.sources["gpt2"])
            == fingerprint_checkpoint(mini_zoo.sources["gpt2"]))
    assert fingerprint_checkpoint(other.target) != fingerprint_checkpoint(mini_zoo.target)


def test_models_load_with_auto_classes_offline(mini_zoo):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kinds = {}
    for path in (mini_zoo.target, mini_zoo.sources["gpt2"]):
        assert (path / "model.safetensors").is_file()
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        assert tok.eos_token and tok.pad_token
        assert round_trips(tok)
        kinds[model.config.model_type] = tok
    assert set(kinds) == {"llama", "gpt2"}
    prompt = "reverse: abcde ="
    # Char-level target: one token per character; the BPE source merges some of them.
    assert len(kinds["llama"](prompt, add_special_tokens=False)["input_ids"]) == len(prompt)
    assert len(kinds["gpt2"](prompt, add_special_tokens=False)["input_ids"]) < len(prompt)


def test_cache_is_reused_by_recipe(mini_zoo, make_recipe):
    stamp = (mini_zoo.target / "model.safetensors").stat().st_mtime_ns
    again = build_zoo(mini_zoo.root.parent.parent, recipe=make_recipe())
    assert again == mini_zoo
    assert (again.target / "model.safetensors").stat().st_mtime_ns == stamp
    assert zoo_manifest(again)["digest"] == make_recipe().digest() != make_recipe(seed=1).digest()


def test_a_new_curriculum_version_means_a_new_zoo(make_recipe, monkeypatch):
    """A zoo built from an older curriculum is rebuilt, not reused: the version is in the digest."""
    import skillstore.zoo.build as zoo_build

    before = make_recipe().digest()
    monkeypatch.setattr(zoo_build, "CURRICULUM_VERSION", zoo_build.CURRICULUM_VERSION + 1)
    assert make_recipe().digest() != before


def test_curriculum_paths_point_into_the_final_folder(mini_zoo):
    cur = mini_zoo.load_curriculum()
    assert cur.root == mini_zoo.curriculum
    for path in (cur.skills["sort"].task_yaml, cur.skills["sort"].heldout_task_yaml):
        text = path.read_text()
        assert str(mini_zoo.curriculum) in text and ".tmp-" not in text
    assert cur.router_eval.parent == mini_zoo.curriculum and cur.router_eval.is_file()


def test_cli_zoo_build_json(mini_zoo, monkeypatch):
    import skillstore.zoo as zoo_pkg
    from skillstore.cli import app

    calls = []

    def fake_build(**kwargs):
        calls.append(kwargs)
        return mini_zoo

    monkeypatch.setattr(zoo_pkg, "build_zoo", fake_build)
    result = CliRunner().invoke(app, ["zoo", "build", "--json", "--seed", "0"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["target"] == str(mini_zoo.target)
    assert data["sources"]["gpt2"] == str(mini_zoo.sources["gpt2"])
    assert data["curriculum"] == str(mini_zoo.curriculum)
    assert calls and calls[0]["seed"] == 0


def test_lm_eval_generates_what_our_greedy_helper_generates(mini_zoo):
    """The task YAML, the char tokenizer and HFLM agree with `generate_answers` sample by sample."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from skillstore.curriculum.lmeval import MAX_GEN_TOKS
    from skillstore.models import load_causal_lm
    from skillstore.training.generate import generate_answers

    cur = mini_zoo.load_curriculum()
    model, tok = load_causal_lm(mini_zoo.target, fingerprint=False)
    task = cur.general.task_name
    out = simple_evaluate(model=HFLM(pretrained=model, tokenizer=tok, batch_size=8), tasks=[task],
                          task_manager=TaskManager(include_path=str(cur.tasks_dir)), limit=8,
                          log_samples=True)
    samples = out["samples"][task]
    prompts = [s["arguments"][0][0] for s in samples]
    ours = generate_answers(model, tok, prompts, max_new_tokens=MAX_GEN_TOKS)
    assert [s["resps"][0][0].strip() for s in samples] == ours
    em = sum(a == s["target"] for a, s in zip(ours, samples, strict=True)) / len(samples)
    assert out["results"][task]["exact_match,none"] == em


def test_source_build_failure_in_its_process_is_reported(make_recipe, tmp_path):
    """The source trains in a spawned process; when it fails, the parent says so plainly."""
    import pytest

    from skillstore.errors import TrainingError
    from skillstore.zoo.build import _paths, _SourceBuild

    with pytest.raises(TrainingError, match="source build failed: FileNotFoundError"):
        with _SourceBuild(make_recipe(), _paths(tmp_path / "no-zoo"), None) as build:
            assert build.parallel, "this test needs 2 cores to take the two-process path"
            build.result()
