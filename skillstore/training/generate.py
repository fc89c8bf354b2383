"""Batched greedy (or sampled) generation and the exact-match evaluation built on it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .data import STOP, encode_text, pad_id_of

Progress = Callable[[str, float], None]


def _stop_ids(tokenizer) -> list[int]:
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    nl = encode_text(tokenizer, STOP)
    if len(nl) == 1:
        ids.append(nl[0])
    return ids


@torch.no_grad()
def generate_answers(model, tokenizer, prompts: list[str], *, max_new_tokens: int = 32,
                     batch_size: int = 64, do_sample: bool = False, temperature: float = 1.0,
                     seed: int = 0, progress: Progress | None = None) -> list[str]:
    """Complete each prompt and return the text up to the first newline.

    Prompts are left-padded in batches, so any causal LM with a tokenizer works.
    """
    if not prompts:
        return []
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    pad = pad_id_of(tokenizer)
    stop = _stop_ids(tokenizer)
    if do_sample:
        torch.manual_seed(seed)
    out: list[str] = []
    for start in range(0, len(prompts), batch_size):
        chunk = [encode_text(tokenizer, p) for p in prompts[start:start + batch_size]]
        width = max(len(c) for c in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, c in enumerate(chunk):
            ids[i, width - len(c):] = torch.tensor(c)
            mask[i, width - len(c):] = 1
        kwargs = ({"do_sample": True, "temperature": temperature, "top_k": 0} if do_sample
                  else {"do_sample": False})
        gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                             max_new_tokens=max_new_tokens, pad_token_id=pad,
                             eos_token_id=stop or None, **kwargs)
        for row in gen[:, width:]:
            text = tokenizer.decode(row.tolist(), skip_special_tokens=True)
            out.append(text.split(STOP, 1)[0].strip())
        if progress:
            progress("generate", min(1.0, (start + batch_size) / len(prompts)))
    model.train(was_training)
    return out


@dataclass(frozen=True)
class ExactMatch:
    """Accuracy of greedy answers against the reference answers."""

    accuracy: float
    n: int
    correct: int

    def to_json(self) -> dict:
        return {"accuracy": self.accuracy, "n": self.n, "correct": self.correct}


def exact_match(model, tokenizer, rows: list[dict], *, batch_size: int = 64,
                max_new_tokens: int | None = None, limit: int | None = None) -> ExactMatch:
    """Greedy-decode every prompt and count answers equal to the reference (after strip)."""
    rows = rows[:limit] if limit else rows
    if not rows:
        return ExactMatch(0.0, 0, 0)
    if max_new_tokens is None:
        longest = max(len(encode_text(tokenizer, r["answer"] + STOP)) for r in rows)
        max_new_tokens = longest + 2
    answers = generate_answers(model, tokenizer, [r["prompt"] for r in rows],
                               max_new_tokens=max_new_tokens, batch_size=batch_size)
    correct = sum(a == r["answer"].strip() for a, r in zip(answers, rows, strict=True))
    return ExactMatch(correct / len(rows), len(rows), correct)
