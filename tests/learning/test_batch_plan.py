"""Both SFT backends train on `data.batch_plan`: one seed, the same rows at every step."""

from __future__ import annotations

import pytest
import torch

from skillstore.training.backends import BACKENDS
from skillstore.training.data import batch_plan, batches, encode_rows
from skillstore.training.sft import SFTConfig
from tests.composition.tinymodel import tiny_llama, tiny_tokenizer

# Ten rows in batches of four: every epoch ends on a short batch of two.
ROWS = [{"prompt": f"copy {w}:", "answer": f" {w}"}
        for w in ("ab", "cd", "ef", "gh", "ij", "kl", "mn", "op", "qr", "st")]
SIX_STEPS = SFTConfig(lr=1e-3, max_steps=6, batch_size=4, eval_every=6, seed=3)


def test_the_plan_is_one_shuffle_per_epoch_cut_into_batches():
    plan = batch_plan(10, 4, 7, seed=3)
    gen = torch.Generator().manual_seed(3)
    epochs = [list(batches(list(range(10)), 4, gen)) for _ in range(3)]
    assert plan == [*epochs[0], *epochs[1], epochs[2][0]]
    assert [len(b) for b in plan] == [4, 4, 2, 4, 4, 2, 4]
    assert batch_plan(10, 4, 7, seed=4) != plan


def _seen_batches(backend, seed: int) -> list[list[str]]:
    """The rows each training step of ``backend`` fed the model, as prompt texts in batch order."""
    tok = tiny_tokenizer()
    model = tiny_llama(tok)
    prompts = {tuple(e.input_ids): r["prompt"]
               for e, r in zip(encode_rows(tok, ROWS, 64), ROWS, strict=True)}
    seen: list[list[str]] = []

    def record(_module, args):
        if torch.is_grad_enabled():  # training steps; validation runs without gradients
            seen.append([prompts[tuple(i for i in row if i != tok.pad_token_id)]
                         for row in args[0].tolist()])

    handle = model.get_input_embeddings().register_forward_pre_hook(record)
    try:
        backend.sft(model, tok, ROWS, None, SIX_STEPS.model_copy(update={"seed": seed}), None)
    finally:
        handle.remove()
    return seen


@pytest.mark.parametrize("seed", [3, 11])
def test_both_backends_see_the_rows_of_the_plan_at_every_step(seed):
    want = [[ROWS[i]["prompt"] for i in b] for b in batch_plan(len(ROWS), 4, 6, seed)]
    for name, backend in BACKENDS.items():
        assert _seen_batches(backend, seed) == want, name


def test_one_seed_trains_and_validates_the_same_model_on_both_backends():
    """Same rows, same schedule, same loss (`loss.answer_loss`), same fused AdamW: in one
    process the two loops train the same weights bit for bit, and they judge the validation
    rows by the same figure (`sft.mean_loss`), so they stop and keep weights alike."""
    tok = tiny_tokenizer()
    start = tiny_llama(tok).state_dict()
    # Two validation batches (of 8 and 2 rows) with answers of different lengths: a mean of
    # batch means is not the token-weighted mean.
    val = [{"prompt": f"copy {w}:", "answer": f" {w}"}
           for w in ("u", "vw", "xyz", "abcd", "e", "fg", "hij", "klmn", "opqrstu", "v")]
    config = SIX_STEPS.model_copy(update={"eval_every": 3, "batch_size": 4})
    trained, runs = {}, {}
    for name, backend in BACKENDS.items():
        model = tiny_llama(tok)
        runs[name] = backend.sft(model, tok, ROWS, val, config, None).metrics
        trained[name] = model.state_dict()
    builtin, trl = trained["builtin"], trained["trl"]
    moved = max(float((builtin[k] - start[k]).abs().max()) for k in start)
    apart = max(float((builtin[k] - trl[k]).abs().max()) for k in start)
    assert moved > 1e-3
    # 3.7e-7 apart while TRL scored its own loss; 1.7e-8 with one loss and two AdamW kernels.
    assert apart == 0.0, (apart, moved)
    seen = {name: [(h["step"], h["val_loss"]) for h in m["history"]] for name, m in runs.items()}
    assert [s for s, _ in seen["trl"]] == [s for s, _ in seen["builtin"]] == [3, 6]
    for (_, want), (_, got) in zip(seen["builtin"], seen["trl"], strict=True):
        assert got == want
    assert runs["trl"]["best_val_loss"] == runs["builtin"]["best_val_loss"]
