"""What the model sees for each doc of an lm-eval task: the token ids of each request's first
forward pass, built by lm-eval's own task objects and HFLM's own encoders."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..routing.learned import input_features

# One request's first forward pass: its token ids and the attention mask the router reads.
Tokens = tuple[tuple[int, ...], tuple[int, ...]]


@dataclass(frozen=True)
class TaskRequests:
    """One task's docs (true doc ids): the arguments of each doc's requests (their context
    strings), and the tokens of each request's first forward pass, None for a doc whose route
    would depend on the batch it lands in (see :func:`request_tokens`)."""

    args: dict[int, tuple]
    tokens: dict[int, tuple[Tokens, ...] | None]


def load_task(include_path: str | Path, task: str):
    """The task object as ``simple_evaluate`` prepares it: few-shot default and seed."""
    from lm_eval.defaults import DEFAULT_OTHER_SEED
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(include_path), include_defaults=False)
    obj = manager.load([task])["tasks"][task]
    if obj.get_config("num_fewshot") is None:
        obj.set_config(key="num_fewshot", value=0)
    obj.set_fewshot_seed(seed=DEFAULT_OTHER_SEED)
    return obj


def task_instances(include_path: str | Path, task: str, *, limit: int | None = None,
                   samples: Sequence[int] | None = None) -> dict[int, list]:
    """true doc id -> its lm-eval Instances, in request order, built as ``simple_evaluate``
    builds them for this ``limit`` (or these doc ``samples``)."""
    import numpy as np
    from lm_eval.defaults import DEFAULT_OTHER_SEED, DEFAULT_RANDOM_SEED
    from lm_eval.evaluator_utils import get_sample_size

    # simple_evaluate seeds these before it builds requests; a task may draw from them.
    random.seed(DEFAULT_RANDOM_SEED)
    np.random.seed(DEFAULT_OTHER_SEED)
    obj = load_task(include_path, task)
    picked = sorted(samples) if samples is not None else None
    obj.build_all_requests(limit=get_sample_size(obj, limit) if picked is None else None,
                           samples=picked)
    out: dict[int, list] = {}
    for inst in sorted(obj.instances, key=lambda i: (i.doc_id, i.idx)):
        # with ``samples`` lm-eval numbers the picked docs 0..k-1 (in dataset order)
        doc = picked[inst.doc_id] if picked else inst.doc_id
        out.setdefault(doc, []).append(inst)
    return out


def request_tokens(lm, inst, pad_token_id: int | None) -> Tokens | None:
    """The (ids, mask) the router sees on the first forward pass of one request, exactly as
    HFLM encodes it; None when they depend on the rest of the batch.

    generate_until: the context, encoded and left-truncated as HFLM.generate_until does; the
    batch's left padding is masked out (it only shifts RoPE positions, which cancel).
    loglikelihood: (context + continuation)[:-1], as HFLM._loglikelihood_tokens builds it. It
    right-pads the batch with token 0 and passes no mask, so the router masks ``ids != pad``:
    batch-independent only when the pad token is 0; otherwise the padding would be pooled.
    """
    if inst.request_type == "generate_until":
        from lm_eval.models.utils import normalize_gen_kwargs

        context, gen_kwargs = inst.args
        max_gen = normalize_gen_kwargs(dict(gen_kwargs), lm.max_gen_toks)["max_gen_toks"]
        ids, mask = lm.tok_batch_encode([context], left_truncate_len=lm.max_length - max_gen,
                                        truncation=lm.truncation)
        return tuple(ids[0].tolist()), tuple(mask[0].tolist())
    if inst.request_type == "loglikelihood":
        if pad_token_id != 0:
            return None
        context, continuation = inst.args
        if context == "":
            cont = lm.tok_encode(continuation, add_special_tokens=False)
            ctx, cont = (([lm.prefix_token_id], cont) if lm.prefix_token_id != cont[0]
                         else (cont[:1], cont[1:]))
        else:
            ctx, cont = lm._encode_pair(context, continuation)
        ids = (ctx + cont)[-(lm.max_length + 1):][:-1]
        return tuple(ids), tuple(int(t != pad_token_id) for t in ids)
    return None


def task_requests(model, tokenizer, include_path: str | Path, task: str, *,
                  limit: int | None = None, batch_size: int = 16) -> TaskRequests:
    """Every doc of ``task`` at ``limit``: its request arguments and first-pass tokens."""
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size,
              device=str(next(model.parameters()).device))
    args, tokens = {}, {}
    for doc, insts in task_instances(include_path, task, limit=limit).items():
        args[doc] = tuple(i.args for i in insts)
        seqs = tuple(request_tokens(lm, i, tokenizer.pad_token_id) for i in insts)
        tokens[doc] = None if any(s is None for s in seqs) else seqs
    return TaskRequests(args, tokens)


def same_contexts(include_path: str | Path, task: str, full: TaskRequests,
                  docs: Sequence[int]) -> bool:
    """Whether lm-eval run on only ``docs`` builds the same requests for them as the full run
    (few-shot examples drawn in sequence, for one, would not)."""
    subset = task_instances(include_path, task, samples=docs)
    return all(tuple(i.args for i in subset.get(d, ())) == full.args[d] for d in docs)


def pooled(model, tokens: Sequence[Tokens], key: tuple[str, int]) -> dict[Tokens, torch.Tensor]:
    """The learned router's features ``key`` (its ``feature_key``) of each (ids, mask),
    computed in batches of equal length, so no padding enters a pooled hidden layer."""
    device = next(model.parameters()).device
    by_length: dict[int, list[Tokens]] = {}
    for t in dict.fromkeys(tokens):
        by_length.setdefault(len(t[0]), []).append(t)
    out = {}
    for group in by_length.values():
        for start in range(0, len(group), 64):
            chunk = group[start:start + 64]
            ids = torch.tensor([t[0] for t in chunk], device=device)
            mask = torch.tensor([t[1] for t in chunk], device=device)
            feats = input_features(model, ids, mask, features=key[0], layer=key[1])
            out.update(zip(chunk, feats, strict=True))
    return out
