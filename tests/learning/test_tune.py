"""Pack tuning: the codes stay, the float payload moves, and the skill's loss goes down."""

from __future__ import annotations

import math

import pytest
import torch

from skillstore.curriculum.validate import load_rows
from skillstore.errors import FingerprintMismatchError, TrainingError
from skillstore.models import load_causal_lm
from skillstore.packs import compress_checkpoint, read_pack
from skillstore.packs.delta import check_compatible
from skillstore.packs.tune import TuneConfig, tune_pack
from skillstore.training.sft import SFTConfig, train_sft


@pytest.fixture(scope="module")
def case_pack(mini_zoo, tmp_path_factory):
    root = tmp_path_factory.mktemp("tune")
    rows = load_rows(mini_zoo.load_curriculum().skills["case"].train)
    model, tok = load_causal_lm(mini_zoo.target, fingerprint=False)
    train_sft(model, tok, rows, None,
              SFTConfig(lr=1e-2, max_steps=60, batch_size=16, eval_every=30))
    model.save_pretrained(root / "tuned")
    tok.save_pretrained(root / "tuned")
    summary = compress_checkpoint(mini_zoo.target, root / "tuned", "compact",
                                  root / "case.safetensors")
    return summary.path, rows


def test_answer_logits_are_the_models_own_logits_at_the_answer_positions(mini_zoo):
    from skillstore.training.data import collate, encode_rows, pad_id_of
    from skillstore.training.loss import answer_logits, plain_head

    model, tok = load_causal_lm(mini_zoo.target)
    rows = load_rows(mini_zoo.load_curriculum().skills["case"].train)[:6]
    batch = collate(encode_rows(tok, rows, 64, "rows"), pad_id_of(tok), torch.device("cpu"))
    assert plain_head(model) is not None  # the path that skips the full logits
    with torch.no_grad():
        got = answer_logits(model, batch)
        full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    scored = batch["labels"][:, 1:] != -100
    assert got.shape == (int(scored.sum()), len(tok)) and got.dtype == torch.float32
    torch.testing.assert_close(got, full[:, :-1][scored].float(), rtol=1e-5, atol=1e-5)


def test_tuning_towards_the_fine_tune_lowers_the_divergence_from_it(mini_zoo, case_pack,
                                                                     tmp_path):
    path, rows = case_pack
    model, tok = load_causal_lm(mini_zoo.target)
    teacher, _ = load_causal_lm(path.parent / "tuned", fingerprint=False)
    result = tune_pack(path, model, tok, rows, tmp_path / "taught.safetensors",
                       TuneConfig(steps=30, lr=3e-2), teacher=teacher)
    assert result.objective == "teacher"
    assert 0 <= result.loss_after < result.loss_before  # a KL divergence, and it fell
    tuned = read_pack(result.path).manifest["tuned"]
    assert tuned["objective"] == "teacher" and tuned["steps"] == 30
    labels = tune_pack(path, model, tok, rows, tmp_path / "labels.safetensors",
                       TuneConfig(steps=2))
    assert read_pack(labels.path).manifest["tuned"]["objective"] == "labels"


def test_a_teacher_that_is_not_the_packs_fine_tune_is_refused(mini_zoo, case_pack, tmp_path):
    path, rows = case_pack
    model, tok = load_causal_lm(mini_zoo.target)
    source, _ = load_causal_lm(mini_zoo.sources["gpt2"])  # another architecture entirely
    with pytest.raises(TrainingError, match="pass the fine-tune the pack was compressed from"):
        tune_pack(path, model, tok, rows, tmp_path / "x.safetensors", teacher=source)
    assert not (tmp_path / "x.safetensors").exists()


def test_tuning_moves_only_the_floats_and_lowers_the_loss(mini_zoo, case_pack, tmp_path):
    path, rows = case_pack
    model, tok = load_causal_lm(mini_zoo.target)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    result = tune_pack(path, model, tok, rows, tmp_path / "tuned.safetensors",
                       TuneConfig(steps=30, lr=3e-2))
    assert result.loss_after < result.loss_before
    old, new = read_pack(path), read_pack(result.path)  # verified digest and manifest
    assert new.manifest["tuned"]["from"] == old.digest and new.manifest["tuned"]["steps"] == 30
    assert old.tensors.keys() == new.tensors.keys()
    moved = 0
    for key, t in old.tensors.items():
        assert new.tensors[key].dtype == t.dtype and new.tensors[key].shape == t.shape
        if t.is_floating_point():
            moved += not torch.equal(new.tensors[key], t)
        else:  # codes and indices are the pack's bits: never touched
            assert torch.equal(new.tensors[key], t), key
    assert moved > 0
    # the same payload; the manifest changes a little, within the budget that counted it
    assert abs(result.bytes - path.stat().st_size) < 512
    index = check_compatible(mini_zoo.target, path.parent / "tuned")
    budget = old.manifest["policy"]["budget"] * 2 * sum(math.prod(i.shape) for i in index.values())
    assert path.stat().st_size <= budget and result.bytes <= budget
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())  # base untouched


def test_tuning_refuses_a_foreign_base_and_empty_rows(mini_zoo, case_pack, tmp_path):
    path, rows = case_pack
    source, source_tok = load_causal_lm(mini_zoo.sources["gpt2"])
    with pytest.raises(FingerprintMismatchError, match="was made for base"):
        tune_pack(path, source, source_tok, rows, tmp_path / "x.safetensors")
    model, tok = load_causal_lm(mini_zoo.target)
    with pytest.raises(TrainingError, match="no training rows"):
        tune_pack(path, model, tok, [], tmp_path / "y.safetensors")
    assert not (tmp_path / "x.safetensors").exists() and not (tmp_path / "y.safetensors").exists()


def test_pack_tune_command(mini_zoo, case_pack, tmp_path):
    from typer.testing import CliRunner

    from skillstore.cli import app

    path, _ = case_pack
    train = mini_zoo.load_curriculum().skills["case"].train
    out = tmp_path / "cli-tuned.safetensors"
    res = CliRunner().invoke(app, ["pack", "tune", str(path), "--train", str(train), "--base",
                                   str(mini_zoo.target), "--steps", "5", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "training loss" in res.output and read_pack(out).manifest["tuned"]["steps"] == 5
    taught = tmp_path / "cli-taught.safetensors"
    res = CliRunner().invoke(app, ["pack", "tune", str(path), "--train", str(train), "--base",
                                   str(mini_zoo.target), "--steps", "3", "--teacher",
                                   str(path.parent / "tuned"), "-o", str(taught)])
    assert res.exit_code == 0, res.output
    assert "divergence from the teacher" in res.output
    assert read_pack(taught).manifest["tuned"]["objective"] == "teacher"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x"}\n')
    res = CliRunner().invoke(app, ["pack", "tune", str(path), "--train", str(bad), "--base",
                                   str(mini_zoo.target), "-o", str(tmp_path / "no.safetensors")])
    from skillstore.errors import DatasetError

    assert (isinstance(res.exception, DatasetError)
            and "missing field 'answer'" in str(res.exception))
    assert not (tmp_path / "no.safetensors").exists()
