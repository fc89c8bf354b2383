"""Trainers: the answer-only loss mask, DPO against a hand-computed value, failure handling."""

from __future__ import annotations

import math

import pytest
import torch

from skillstore.curriculum.validate import load_rows, write_jsonl
from skillstore.errors import DatasetError, TrainingError
from skillstore.models import load_causal_lm
from skillstore.training.data import IGNORE_INDEX, collate, encode_rows
from skillstore.training.dpo import DPOConfig, dpo_loss, sequence_logprobs, train_dpo
from skillstore.training.run import TrainJob, get_trainer, run_training
from skillstore.training.sft import SFTConfig, train_sft


def test_loss_mask_covers_exactly_the_answer_tokens(mini_zoo):
    for path in (mini_zoo.target, mini_zoo.sources["gpt2"]):
        _, tok = load_causal_lm(path, fingerprint=False)
        rows = [{"prompt": "add: 12+34 =", "answer": "46"},
                {"prompt": "reverse: abcde =", "answer": "edcba"}]
        examples = encode_rows(tok, rows, 64)
        batch = collate(examples, tok.pad_token_id, torch.device("cpu"))
        for i, row in enumerate(rows):
            labels = batch["labels"][i]
            kept = labels[labels != IGNORE_INDEX].tolist()
            assert tok.decode(kept) == row["answer"] + "\n"
            n_prompt = len(tok(row["prompt"], add_special_tokens=False)["input_ids"])
            assert (labels[:n_prompt] == IGNORE_INDEX).all()
            assert labels[n_prompt].item() != IGNORE_INDEX
            # Padding is masked out too.
            assert (labels[batch["attention_mask"][i] == 0] == IGNORE_INDEX).all()


def test_dpo_loss_matches_hand_computed_value():
    pc, pr = torch.tensor([-1.0, -2.0]), torch.tensor([-3.0, -1.0])
    rc, rr = torch.tensor([-2.0, -2.0]), torch.tensor([-2.0, -2.0])
    # margins: ((-1+2) - (-3+2)) = 2 and ((-2+2) - (-1+2)) = -1; beta = 0.5
    expected = (math.log(1 + math.exp(-1.0)) + math.log(1 + math.exp(0.5))) / 2
    assert dpo_loss(pc, pr, rc, rr, beta=0.5).item() == pytest.approx(expected, rel=1e-6)
    # Policy equal to the reference: log 2, whatever beta.
    assert dpo_loss(rc, rr, rc, rr, beta=3.0).item() == pytest.approx(math.log(2), rel=1e-6)


def test_sequence_logprobs_sum_answer_token_logprobs(mini_zoo):
    model, tok = load_causal_lm(mini_zoo.target, fingerprint=False)
    examples = encode_rows(tok, [{"prompt": "add: 1+2 =", "answer": "3"}], 32)
    batch = collate(examples, tok.pad_token_id, torch.device("cpu"))
    got = sequence_logprobs(model, batch).item()
    ids = examples[0].input_ids
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0], -1)
    n = len(examples[0].prompt_ids)
    want = sum(logp[t - 1, ids[t]].item() for t in range(n, len(ids)))
    assert got == pytest.approx(want, rel=1e-5)


def test_dpo_raises_the_chosen_margin(mini_zoo):
    model, tok = load_causal_lm(mini_zoo.target, fingerprint=False)
    reference, _ = load_causal_lm(mini_zoo.target, fingerprint=False)
    pairs = [{"prompt": f"spell digit: {d} =", "chosen": w, "rejected": w[::-1]}
             for d, w in enumerate(["zero", "one", "two", "three"])]
    result = train_dpo(model, reference, tok, pairs,
                       DPOConfig(beta=0.5, lr=3e-3, max_steps=15, batch_size=4))
    assert result.metrics["first_loss"] == pytest.approx(math.log(2), rel=1e-4)
    assert result.metrics["final_loss"] < 0.5 * math.log(2)


def test_nan_loss_stops_training_and_saves_nothing(mini_zoo, tmp_path):
    train = write_jsonl(tmp_path / "t.jsonl", [{"prompt": "add: 1+2 =", "answer": "3"}] * 4)
    out = tmp_path / "out"
    job = TrainJob(base_dir=mini_zoo.target, train_path=train, out_dir=out,
                   sft=SFTConfig(lr=1e30, max_steps=20, batch_size=4, grad_clip=1e30))
    with pytest.raises(TrainingError, match="nothing was saved"):
        run_training("sft", job)
    assert not out.exists()
    assert not list(tmp_path.glob(".out*"))


@pytest.mark.parametrize("stop_loss", [0.0, 50.0])
def test_training_stops_once_the_validation_loss_reaches_stop_loss(mini_zoo, stop_loss):
    model, tok = load_causal_lm(mini_zoo.target, fingerprint=False)
    rows = [{"prompt": "copy: ab =", "answer": "ab"}] * 8
    cfg = SFTConfig(max_steps=12, batch_size=4, eval_every=3, patience=100, stop_loss=stop_loss)
    metrics = train_sft(model, tok, rows, rows, cfg).metrics
    if stop_loss:  # any loss is under 50: it stops at the first evaluation
        assert (metrics["steps"], metrics["stop_reason"]) == (3, "stop_loss")
    else:
        assert ((metrics["steps"], metrics["stop_reason"], metrics["stopped_early"])
                == (12, None, False))


def test_empty_data_is_refused(mini_zoo):
    model, tok = load_causal_lm(mini_zoo.target, fingerprint=False)
    with pytest.raises(DatasetError, match="no rows"):
        train_sft(model, tok, [], None, SFTConfig(max_steps=2))


def test_unknown_trainer_lists_the_valid_ones():
    with pytest.raises(Exception, match="Valid names: distill, dpo, lora, sft"):
        get_trainer("sfft")


def test_run_training_saves_a_loadable_model(mini_zoo, tmp_path):
    cur = mini_zoo.load_curriculum()
    out = tmp_path / "tuned"
    job = TrainJob(base_dir=mini_zoo.target, train_path=cur.skills["knowledge"].train,
                   val_path=cur.skills["knowledge"].validation, out_dir=out,
                   sft=SFTConfig(max_steps=5, batch_size=8, eval_every=5))
    stages = []
    metrics = run_training("sft", job, progress=lambda s, f: stages.append((s, f)))
    assert metrics["steps"] == 5 and stages[-1] == ("save", 1.0)
    model, tok = load_causal_lm(out)
    assert model.config.model_type == "llama" and len(load_rows(job.train_path)) > 0


def test_dpo_job_runs_sft_then_dpo_and_saves(mini_zoo, tmp_path):
    cur = mini_zoo.load_curriculum()
    out = tmp_path / "dpo"
    job = TrainJob(base_dir=mini_zoo.target, train_path=cur.skills["add"].train, out_dir=out,
                   skill="add", sft=SFTConfig(max_steps=3, batch_size=8),
                   dpo=DPOConfig(max_steps=3, batch_size=8))
    metrics = run_training("dpo", job)
    assert (metrics["dpo"]["steps"] == 3
            and metrics["dpo"]["n_pairs"] == len(load_rows(job.train_path)))
    assert (out / "model.safetensors").is_file()


def test_distill_job_without_a_source_is_refused(mini_zoo, tmp_path):
    cur = mini_zoo.load_curriculum()
    job = TrainJob(base_dir=mini_zoo.target, train_path=cur.skills["add"].train,
                   out_dir=tmp_path / "d")
    with pytest.raises(Exception, match="needs a source model"):
        run_training("distill", job)
    assert not (tmp_path / "d").exists()


def _weights(folder) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_training_from_the_current_state_grafts_its_packs_and_takes_them_out(
        mini_zoo, tmp_path, monkeypatch):
    from skillstore.packs import compress_checkpoint
    from skillstore.training import run
    from skillstore.training.run import GraftSpec
    from skillstore.training.sft import TrainResult

    cur = mini_zoo.load_curriculum()
    rows = {"train_path": cur.skills["add"].train, "val_path": cur.skills["add"].validation}
    earlier = run_training("sft", TrainJob(base_dir=mini_zoo.target, out_dir=tmp_path / "earlier",
                                           sft=SFTConfig(max_steps=2, batch_size=8), **rows))
    pack = compress_checkpoint(mini_zoo.target, earlier["out_dir"], "lossless",
                               tmp_path / "earlier.safetensors").path
    base, grafted = _weights(mini_zoo.target), _weights(tmp_path / "earlier")
    changed = next(n for n in base if not torch.equal(base[n], grafted[n]))
    seen = {}

    class Watch:  # a trainer that changes nothing and records what it was handed
        name, description = "watch", "records the weights it trains"

        def train(self, job, model, tok, progress):
            seen["weight"] = model.state_dict()[changed].detach().clone()
            return TrainResult(model, {"steps": 0})

    monkeypatch.setattr(run, "get_trainer", lambda name: Watch())
    out = run_training("watch", TrainJob(base_dir=mini_zoo.target, out_dir=tmp_path / "ckpts",
                                         content_addressed=True,
                                         graft=(GraftSpec(path=pack, scale=1.0),), **rows))
    # Training saw base + the current state's pack; what is saved is the base plus only what
    # training changed (here nothing), in a folder named by its fingerprint.
    # (the lossless preset stores deltas in 16 bits: equal up to their rounding)
    step = (grafted[changed] - base[changed]).abs().max()
    assert (seen["weight"] - grafted[changed]).abs().max() < step / 100
    saved = _weights(tmp_path / "ckpts" / out["fingerprint"].removeprefix("sha256:")[:32])
    assert (saved[changed] - base[changed]).abs().max() < step / 100
    assert out["out_dir"].endswith(out["fingerprint"].removeprefix("sha256:")[:32])


def test_preference_pairs_use_refused_answers_and_never_invent_one_unasked(mini_zoo):
    from skillstore.training.dpo import preference_pairs

    model, tok = load_causal_lm(mini_zoo.target, fingerprint=False)
    rows = [{"prompt": "add: 1+2 =", "answer": "3"}, {"prompt": "add: 2+2 =", "answer": "4"}]
    everything_passes = lambda p, a: True  # noqa: E731
    with pytest.raises(DatasetError, match="synthetic_rejected"):
        preference_pairs(model, tok, rows, everything_passes, config=DPOConfig(samples=1))
    pairs, origin = preference_pairs(model, tok, rows, everything_passes,
                                     config=DPOConfig(samples=1, synthetic_rejected=True))
    assert origin["synthetic"] == 2 and all(p["rejected"] != p["chosen"] for p in pairs)
    # A refused source answer is the rejected side before the model's own are looked at.
    only_truth = lambda p, a: a == {"add: 1+2 =": "3", "add: 2+2 =": "4"}[p]  # noqa: E731
    pairs, origin = preference_pairs(model, tok, rows, only_truth, config=DPOConfig(samples=0),
                                     candidates={"add: 1+2 =": ["3", "12"]})
    assert pairs[0] == {"prompt": "add: 1+2 =", "chosen": "3", "rejected": "12"}
    assert origin["source"] == 1 and origin["synthetic"] == 0
