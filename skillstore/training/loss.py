"""The SFT loss on answer tokens, scored without the whole batch's vocabulary-sized logits.

A causal LM's forward returns logits for every position: batch x sequence x vocabulary, upcast
to float32 for the cross-entropy. At Qwen2's 151,936-token vocabulary that is 0.6 GB per
thousand tokens per copy, and the loss keeps several copies for the backward pass, so at a
few thousand tokens the logits outweigh every layer's activations (and gradient checkpointing,
which saves activations only, cannot help). The loss needs far less: only the positions that
predict an answer token (prompt and padding are ignored), and only a chunk of them at a time.
`answer_loss` runs the model's backbone, gathers the hidden states of those positions, and
scores them through the LM head in chunks of at most `LOSS_CHUNK_BYTES` of float32 logits;
with more than one chunk, each is recomputed in the backward pass rather than kept.

The value is the one `model(**batch).loss` gives (the mean cross-entropy over answer tokens,
up to float rounding). Only model types whose logits are the LM head applied to the backbone's
last hidden state take this path (`PLAIN_HEAD_TYPES`); any other model, or a wrapped one (PEFT),
is scored by its own forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .data import IGNORE_INDEX

#: Float32 logits scored at once: each chunk's logits and their log-softmax are the only
#: vocabulary-sized tensors alive at a time.
LOSS_CHUNK_BYTES = 64 * 2 ** 20
#: model_type values whose ForCausalLM computes ``logits = lm_head(last_hidden_state)`` with
#: nothing after it (no soft-capping or logit scale), read off each class's forward in
#: transformers 5.25. The mixture-of-experts ones add a router loss when their config asks for
#: router logits (``output_router_logits``); such a model is scored by its own forward.
PLAIN_HEAD_TYPES = frozenset({"llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3",
                              "qwen3_moe", "gpt2", "gpt_neox", "gemma", "phi3", "starcoder2"})


def chunk_tokens(vocab: int) -> int:
    """Answer tokens scored per chunk for a vocabulary of ``vocab``."""
    return max(1, LOSS_CHUNK_BYTES // (4 * vocab))


def plain_head_config(config) -> bool:
    """Whether a model of this config computes its loss from the LM head on its backbone's
    output and nothing else (read by the memory plan from a checkpoint's config too)."""
    return (getattr(config, "model_type", None) in PLAIN_HEAD_TYPES
            and not getattr(config, "output_router_logits", False))  # else a router term


def plain_head(model) -> torch.nn.Module | None:
    """The LM head when ``model``'s logits are that head on its backbone's output, else None."""
    from transformers import PreTrainedModel  # loaded by then: ``model`` is one or is not

    if not isinstance(model, PreTrainedModel) or not plain_head_config(model.config):
        return None
    head = model.get_output_embeddings()
    if model.base_model is model or not isinstance(head, torch.nn.Linear):
        return None
    return head


def _chunk_sum(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = head(hidden).float()
    return F.cross_entropy(logits, targets, reduction="sum")


def _answer_hidden(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The backbone's hidden states at the positions that predict an answer token (labels
    that are not IGNORE_INDEX, each predicted from the position before it), and those tokens."""
    out = model.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           use_cache=False)
    targets = batch["labels"][:, 1:]
    scored = targets != IGNORE_INDEX
    return out.last_hidden_state[:, :-1][scored], targets[scored]


def answer_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy over the answer tokens of a `data.collate` batch (labels that are
    not IGNORE_INDEX, each predicted from the position before it)."""
    head = plain_head(model)
    if head is None:
        return model(**batch).loss
    hidden, targets = _answer_hidden(model, batch)
    step = chunk_tokens(head.weight.shape[0])
    if len(targets) <= step:
        return _chunk_sum(head, hidden, targets) / max(1, len(targets))
    recompute = torch.is_grad_enabled()
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, len(targets), step):
        args = (head, hidden[start:start + step], targets[start:start + step])
        total = total + (checkpoint(_chunk_sum, *args, use_reentrant=False) if recompute
                         else _chunk_sum(*args))
    return total / len(targets)


def answer_logits(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Float32 logits at the positions that predict an answer token of a `data.collate` batch,
    one row per answer token in batch order: what a distillation loss compares. Plain-head
    models score only those positions through the LM head; any other model runs its own
    forward and the rows are picked from its logits."""
    head = plain_head(model)
    if head is None:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return logits[:, :-1][batch["labels"][:, 1:] != IGNORE_INDEX].float()
    return head(_answer_hidden(model, batch)[0]).float()


def distill_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean over answer tokens of KL(teacher || student), from `answer_logits` rows of each."""
    return F.kl_div(F.log_softmax(student, -1), F.log_softmax(teacher, -1), log_target=True,
                    reduction="sum") / max(1, len(student))
