"""The memory plan: its estimate against a measured peak, and a job that cannot fit refused with
one line naming the setting to change, before anything is loaded."""

from __future__ import annotations

import psutil
import pytest
import torch

from skillstore.curriculum.validate import write_jsonl
from skillstore.errors import ConfigError
from skillstore.training import run
from skillstore.training.memory import ModelShape
from skillstore.training.run import TrainJob, longest_row, plan_memory, run_training
from skillstore.training.sft import SFTConfig
from tests.composition.tinymodel import save, tiny_tokenizer

#: The estimate is held to this factor of the measured peak (docs/learning.md, "Memory plan":
#: 0.87-1.10 in fresh processes from 0.45 M to 134 M parameters).
FACTOR = 1.3
BATCH = 32


def tiny_llama_wide_vocab(tok, vocab: int = 8192):
    """Width 128, 2 layers, and a vocabulary of 8,192 (the char tokenizer uses the first ids):
    big enough that the terms the plan models, not the allocator's slack, make the peak."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=vocab, hidden_size=128, intermediate_size=384, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
        tie_word_embeddings=False, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("memory")
    tok = tiny_tokenizer()
    rows = [{"prompt": f"reverse: {w * 4} =", "answer": w[::-1]}
            for w in ("abcdefgh", "ijklmnop", "qrstuvwx", "yzabcdef") * (BATCH // 4)]
    return {"base": save(tiny_llama_wide_vocab(tok), tok, root / "base"), "tok": tok,
            "train": write_jsonl(root / "train.jsonl", rows), "root": root}


def job_for(world, name: str, **kw) -> TrainJob:
    return TrainJob(base_dir=world["base"], train_path=world["train"],
                    out_dir=world["root"] / name, backend="builtin",
                    sft=SFTConfig(max_steps=2, batch_size=BATCH, eval_every=2), **kw)


def test_the_shape_is_read_from_the_checkpoint_without_loading_it(world):
    shape = ModelShape.of_folder(world["base"])
    model = tiny_llama_wide_vocab(world["tok"])
    assert shape.params == sum(p.numel() for p in model.parameters())
    assert (shape.param_bytes, shape.hidden, shape.layers, shape.vocab) == (4, 128, 2, 8192)


def test_the_estimate_is_within_the_stated_factor_of_the_measured_peak(world):
    out = run_training("sft", job_for(world, "measured"))
    memory = out["memory"]
    estimate, measured = memory["total_bytes"], memory["measured_peak_bytes"]
    # In the test process the imports are done, so the estimate's fixed overhead is left out.
    modelled = estimate - memory["parts_bytes"]["overhead"]
    assert modelled / FACTOR <= measured <= estimate * FACTOR, memory
    # What the peak stands on: the test process's RSS as training began, imports and all.
    assert 100 * 2 ** 20 < memory["process_before_bytes"] < psutil.Process().memory_info().rss * 2
    # Checkpointing lowers the estimate by the activations it does not keep.
    gc = run_training("sft", job_for(world, "checkpointed", gradient_checkpointing=True))
    gc_memory = gc["memory"]
    assert gc_memory["parts_bytes"]["activations"] < memory["parts_bytes"]["activations"]
    assert gc_memory["measured_peak_bytes"] < measured


@pytest.mark.parametrize("room, names", [
    ("between the plan with and without checkpointing", "--gradient-checkpointing"),
    ("just over the weights, gradients and optimiser state", "--batch-size"),
    ("under the weights alone", "FSDP"),
])
def test_a_job_that_cannot_fit_is_refused_naming_the_setting(world, monkeypatch, room, names):
    job = job_for(world, "refused")
    device, shape = torch.device("cpu"), ModelShape.of_folder(world["base"])
    longest = longest_row(job, world["tok"])
    plan = plan_memory("sft", job, shape, "builtin", device, longest)
    with_gc = plan_memory("sft", job, shape, "builtin", device, longest,
                          gradient_checkpointing=True)
    one = plan_memory("sft", job, shape, "builtin", device, longest, batch_size=1,
                      gradient_checkpointing=True)
    free = {"--gradient-checkpointing": (plan.total + with_gc.total) // 2,
            "--batch-size": (one.total + with_gc.total) // 2,
            "FSDP": shape.weight_bytes // 2}[names]
    monkeypatch.setattr(run, "available_bytes", lambda _device: free)
    calls = []
    with pytest.raises(ConfigError) as err:
        run_training("sft", job, progress=lambda s, f: calls.append(s))
    message = str(err.value)
    assert names in message and "\n" not in message and "is free" in message
    assert not calls and not job.out_dir.exists()
    if names == "--batch-size":  # the batch size it names is the largest that fits
        size = int(message.split("--batch-size ")[1].split(")")[0])
        fits = [plan_memory("sft", job, shape, "builtin", device, longest, batch_size=b,
                            gradient_checkpointing=True).total <= free for b in (size, size + 1)]
        assert fits == [True, False]


def test_sft_logits_are_planned_for_answer_tokens_a_chunk_at_a_time():
    """At Qwen2's vocabulary a batch's full logits would outweigh the model: the plan counts
    what `loss.answer_loss` holds (the answers' tokens, at most one chunk), and TRL's own head
    where several processes keep it."""
    from skillstore.training.loss import chunk_tokens
    from skillstore.training.memory import LOGIT_COPIES, TRL_LOGIT_CHUNK, estimate

    vocab = 151_936
    shape = ModelShape(params=494_000_000, param_bytes=2, hidden=896, layers=24, heads=14,
                       kv_heads=2, intermediate=4864, vocab=vocab, plain_head=True)
    common = {"device": "cpu", "batch_size": 8, "seq_len": 512}
    chunk = LOGIT_COPIES["builtin"] * chunk_tokens(vocab) * vocab * 4
    for backend in ("builtin", "trl"):
        plan = estimate(shape, backend=backend, scored_len=64, **common)
        assert plan.parts["logits"] == chunk and plan.scored_len == 64
    short = estimate(shape, backend="builtin", scored_len=64, **{**common, "batch_size": 1})
    assert short.parts["logits"] == min(chunk, LOGIT_COPIES["builtin"] * 64 * vocab * 4)
    ddp = estimate(shape, backend="trl", scored_len=64, processes=2, **common)
    assert ddp.parts["logits"] == LOGIT_COPIES["trl"] * min(8 * 512, TRL_LOGIT_CHUNK) * vocab * 4
    assert ddp.scored_len is None
    other = estimate(ModelShape(**{**shape.__dict__, "plain_head": False}), backend="builtin",
                     scored_len=64, **common)
    assert other.parts["logits"] == LOGIT_COPIES["builtin"] * 8 * 512 * vocab * 4
