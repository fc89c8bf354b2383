"""`loss.answer_loss`: the model's own SFT loss and gradients, without the batch's logits."""

from __future__ import annotations

import pytest
import torch

from skillstore.training import loss as loss_mod
from skillstore.training.data import collate, encode_rows, pad_id_of
from skillstore.training.loss import answer_loss, chunk_tokens, plain_head
from skillstore.zoo.models import ModelSpec, gpt2_model, llama_model, qwen2_model
from tests.composition.tinymodel import tiny_tokenizer

# Prompts and answers of different lengths: right padding, and answers that start at
# different positions in each row.
ROWS = [{"prompt": f"reverse {w}:", "answer": f" {w[::-1]}"}
        for w in ("ab", "cdefg", "hij", "klmnopqr", "s", "tuvw")]
BUILDERS = {"llama": llama_model, "gpt2": gpt2_model, "qwen2": qwen2_model}
SPEC = ModelSpec(hidden=32, layers=2, heads=4, intermediate=64)


def _model_and_batch(arch: str):
    tok = tiny_tokenizer()
    torch.manual_seed(0)
    model = BUILDERS[arch](SPEC, tok)
    model.train()
    return model, collate(encode_rows(tok, ROWS, 64), pad_id_of(tok), torch.device("cpu"))


def _loss_and_grads(model, fn) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = fn()
    loss.backward()
    return float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters()
                         if p.grad is not None}


@pytest.mark.parametrize("arch", sorted(BUILDERS))
@pytest.mark.parametrize("chunk_bytes", [None, 3], ids=["one chunk", "chunks of 3 tokens"])
def test_the_loss_and_its_gradients_are_the_models_own(arch, chunk_bytes, monkeypatch):
    model, batch = _model_and_batch(arch)
    vocab = model.get_output_embeddings().weight.shape[0]
    if chunk_bytes is not None:  # a few answer tokens per chunk: many chunks, recomputed
        monkeypatch.setattr(loss_mod, "LOSS_CHUNK_BYTES", chunk_bytes * 4 * vocab)
        assert chunk_tokens(vocab) == chunk_bytes
    assert plain_head(model) is model.get_output_embeddings()
    want, want_grads = _loss_and_grads(model, lambda: model(**batch).loss)
    got, got_grads = _loss_and_grads(model, lambda: answer_loss(model, batch))
    assert got == pytest.approx(want, rel=1e-6)
    assert got_grads.keys() == want_grads.keys()
    for name, g in want_grads.items():
        assert torch.allclose(got_grads[name], g, rtol=1e-4, atol=1e-7), name


def _saved_logit_bytes(model, fn) -> int:
    """Bytes of the vocabulary-sized tensors autograd saves for the backward pass of ``fn()``."""
    vocab = model.get_output_embeddings().weight.shape[0]
    saved = []

    def pack(t):
        if t.dim() >= 1 and t.shape[-1] == vocab and t.numel() > vocab:
            saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn().backward()
    return sum(saved)


def test_only_one_chunk_of_logits_is_alive_for_the_backward_pass(monkeypatch):
    model, batch = _model_and_batch("llama")
    vocab = model.get_output_embeddings().weight.shape[0]
    monkeypatch.setattr(loss_mod, "LOSS_CHUNK_BYTES", 4 * 4 * vocab)  # 4 tokens a chunk
    answer_tokens = int((batch["labels"][:, 1:] != -100).sum())
    assert answer_tokens > 8
    full = _saved_logit_bytes(model, lambda: model(**batch).loss)
    chunked = _saved_logit_bytes(model, lambda: answer_loss(model, batch))
    # The model's own loss keeps the whole batch's logits (every position, float32 or not);
    # the chunked loss keeps none between forward and backward: each chunk is recomputed.
    assert full >= batch["input_ids"].numel() * vocab * 4
    assert chunked == 0


def test_a_model_without_a_plain_head_is_scored_by_its_own_forward():
    model, batch = _model_and_batch("llama")

    class Wrapped(torch.nn.Module):  # e.g. a PEFT wrapper: not a PreTrainedModel
        def __init__(self, inner):
            super().__init__()
            self.inner = inner
            self.calls = 0

        def forward(self, **kw):
            self.calls += 1
            return self.inner(**kw)

    wrapped = Wrapped(model)
    assert plain_head(wrapped) is None
    with torch.no_grad():
        assert float(answer_loss(wrapped, batch)) == pytest.approx(float(model(**batch).loss))
    assert wrapped.calls == 1
    model.config.model_type = "gemma2"  # soft-caps its logits: the head alone is not the logits
    assert plain_head(model) is None


@pytest.mark.parametrize("router_logits", [False, True])
def test_a_mixture_of_experts_with_a_router_loss_is_scored_by_its_own_forward(router_logits):
    """Mixtral's loss adds the router's load-balancing term when its config asks for router
    logits; the head alone would leave it out."""
    from transformers import MixtralConfig, MixtralForCausalLM

    tok = tiny_tokenizer()
    torch.manual_seed(0)
    model = MixtralForCausalLM(MixtralConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, num_local_experts=2,
        num_experts_per_tok=1, output_router_logits=router_logits,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id))
    batch = collate(encode_rows(tok, ROWS, 64), pad_id_of(tok), torch.device("cpu"))
    assert (plain_head(model) is None) == router_logits
    with torch.no_grad():
        assert float(answer_loss(model, batch)) == pytest.approx(float(model(**batch).loss),
                                                                rel=1e-5)
