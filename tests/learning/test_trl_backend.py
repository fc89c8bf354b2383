"""The TRL backend keeps the built-in loop's contract: answer-only loss, cancellation between steps,
early stopping with the best weights restored, a NaN refused, the seed honoured."""

from __future__ import annotations

import pytest
import torch

from skillstore.errors import TrainingError
from skillstore.training.backends import get_backend
from skillstore.training.data import collate, encode_rows, pad_id_of
from skillstore.training.sft import SFTConfig, mean_loss
from tests.composition.tinymodel import tiny_llama, tiny_tokenizer

ROWS = [{"prompt": f"add: {a}+{b} =", "answer": str(a + b)}
        for a, b in ((1, 2), (3, 4), (2, 5), (6, 1))]
TRL = get_backend("trl")


@pytest.fixture
def tiny():
    tok = tiny_tokenizer()
    return tiny_llama(tok), tok


class Cancelled(Exception):
    pass


def test_the_loss_is_on_answer_tokens_only(tiny):
    model, tok = tiny
    examples = encode_rows(tok, ROWS, 64)
    answer_only = mean_loss(model, examples, pad_id_of(tok), len(ROWS))
    batch = collate(examples, pad_id_of(tok), torch.device("cpu"))
    with torch.no_grad():
        every_token = float(model(input_ids=batch["input_ids"],
                                  attention_mask=batch["attention_mask"],
                                  labels=batch["input_ids"]).loss)
    assert abs(every_token - answer_only) > 0.01  # the two losses are told apart
    result = TRL.sft(model, tok, ROWS, None,
                     SFTConfig(max_steps=1, batch_size=len(ROWS), eval_every=1), None)
    # The first step's loss is taken on the weights before any update: the built-in loop's.
    assert result.metrics["history"][0]["train_loss"] == pytest.approx(answer_only, rel=1e-4)


def test_a_cancel_stops_training_between_steps_and_leaves_a_plain_model(tiny):
    model, tok = tiny
    calls = []

    def progress(stage, fraction):
        calls.append((stage, fraction))
        if len(calls) == 2:
            raise Cancelled("job cancelled")

    with pytest.raises(Cancelled):
        TRL.sft(model, tok, ROWS, None, SFTConfig(max_steps=10, batch_size=2, eval_every=10),
                progress)
    assert calls == [("train", 0.1), ("train", 0.2)]  # no third step ran
    assert "forward" not in vars(model)


def test_early_stopping_restores_the_best_weights(tiny):
    model, tok = tiny
    seen = {}

    def progress(_stage, fraction):  # called after each step, before that step's evaluation
        seen[round(fraction * 10)] = {k: v.detach().clone() for k, v in model.state_dict().items()}

    # min_delta so large that no evaluation after the first counts as better: patience 1 stops
    # at the second evaluation and hands back the weights the first one saw.
    cfg = SFTConfig(lr=1e-2, max_steps=10, batch_size=2, eval_every=2, patience=1,
                    min_delta=1e9, stop_loss=0.0)
    result = TRL.sft(model, tok, ROWS, ROWS, cfg, progress)
    assert result.metrics["steps"] == 4 and result.metrics["stop_reason"] == "patience"
    assert [h["step"] for h in result.metrics["history"]] == [2, 4]
    assert all(torch.equal(v, seen[2][k]) for k, v in result.model.state_dict().items())
    assert not all(torch.equal(v, seen[4][k]) for k, v in result.model.state_dict().items())

    stopped = TRL.sft(tiny_llama(tok), tok, ROWS, ROWS, SFTConfig(max_steps=10, batch_size=2,
                                                                  eval_every=2, stop_loss=100.0),
                      None)
    assert stopped.metrics["steps"] == 2 and stopped.metrics["stop_reason"] == "stop_loss"


def test_a_nan_loss_is_refused(tiny):
    model, tok = tiny
    with torch.no_grad():
        model.lm_head.weight.fill_(float("nan"))
    with pytest.raises(TrainingError, match="nothing was saved"):
        TRL.sft(model, tok, ROWS, None, SFTConfig(max_steps=3, batch_size=2, eval_every=3), None)


def test_the_seed_decides_the_run(tiny):
    _, tok = tiny

    def run(seed):
        cfg = SFTConfig(lr=1e-2, max_steps=2, batch_size=2, eval_every=2, seed=seed)
        result = TRL.sft(tiny_llama(tok), tok, ROWS, None, cfg, None)
        assert result.metrics["seed"] == seed
        return result.model.state_dict()

    first, again, other = run(0), run(0), run(1)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)
