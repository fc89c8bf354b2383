"""Tokenising prompt/answer rows for causal-LM training, with the loss on answer tokens only."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import DatasetError

IGNORE_INDEX = -100
#: Appended to every answer: the lm-eval tasks stop generating at a newline.
STOP = "\n"


@dataclass(frozen=True)
class Example:
    """One tokenised row: the prompt tokens then the answer tokens (answer + stop string)."""

    prompt_ids: tuple[int, ...]
    answer_ids: tuple[int, ...]

    @property
    def input_ids(self) -> list[int]:
        return [*self.prompt_ids, *self.answer_ids]

    @property
    def labels(self) -> list[int]:
        """The targets: the answer's own ids, and IGNORE_INDEX over the prompt."""
        return [IGNORE_INDEX] * len(self.prompt_ids) + list(self.answer_ids)


def encode_text(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_example(tokenizer, prompt: str, answer: str, max_length: int) -> Example:
    """Prompt and answer are tokenised apart, exactly as generation will see them.

    A prompt that leaves no room for its answer within ``max_length`` is refused rather than
    silently cut, since a truncated answer would teach the wrong thing.
    """
    prompt_ids = encode_text(tokenizer, prompt)
    answer_ids = encode_text(tokenizer, answer + STOP)
    if not answer_ids:
        raise DatasetError(f"Row with prompt {prompt!r} has an answer that encodes to no "
                           "tokens; give it a non-empty answer.")
    if len(prompt_ids) + len(answer_ids) > max_length:
        raise DatasetError(
            f"Row with prompt {prompt[:40]!r} is {len(prompt_ids) + len(answer_ids)} tokens, over "
            f"max_length={max_length}; shorten it or raise max_length in the trainer config."
        )
    return Example(tuple(prompt_ids), tuple(answer_ids))


def encode_rows(tokenizer, rows: list[dict], max_length: int,
                name: str = "training data") -> list[Example]:
    """Tokenise prompt/answer rows; no rows at all is an error, not a no-op."""
    if not rows:
        raise DatasetError(f"{name} has no rows; give the trainer at least one prompt/answer pair.")
    return [encode_example(tokenizer, r["prompt"], r["answer"], max_length) for r in rows]


def collate(examples: list[Example], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Right-padded input_ids, attention_mask and labels (padding is ignored by the loss)."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device),
            "labels": labels.to(device)}


def batches(examples: list[Example], batch_size: int, generator: torch.Generator | None):
    """Yield lists of examples, shuffled with ``generator`` (or in order when it is None)."""
    order = (torch.randperm(len(examples), generator=generator).tolist() if generator is not None
             else list(range(len(examples))))
    for start in range(0, len(order), batch_size):
        yield [examples[i] for i in order[start:start + batch_size]]


def batch_plan(n: int, batch_size: int, steps: int, seed: int) -> list[list[int]]:
    """The row indices of each of ``steps`` training batches: one shuffle of the ``n`` rows per
    epoch from a generator seeded with ``seed``, cut into ``batch_size`` chunks (an epoch's
    last chunk may be short). Every SFT backend trains on this plan, so a job's seed fixes
    which rows each step sees whichever loop runs it."""
    generator = torch.Generator().manual_seed(seed)
    plan: list[list[int]] = []
    while len(plan) < steps:
        order = torch.randperm(n, generator=generator).tolist()
        plan.extend(order[start:start + batch_size] for start in range(0, n, batch_size))
    return plan[:steps]


def pad_id_of(tokenizer) -> int:
    pad = tokenizer.pad_token_id
    return pad if pad is not None else tokenizer.eos_token_id
