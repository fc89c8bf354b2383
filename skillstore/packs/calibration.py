"""Calibration statistics for GPTQ from a skill's own training rows, one layer at a time."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

import torch

from ..training.data import encode_example
from .quant import collect_hessians

CALIBRATION_ROWS = 64  # rows of the skill's training data whose inputs calibrate GPTQ


def row_batches(tokenizer, rows: list[dict], device=None) -> list[torch.Tensor]:
    """Each prompt/answer row as one (1, tokens) batch, tokenised as training does: no
    padding, so that no pad token enters the second moments."""
    return [torch.tensor([encode_example(tokenizer, r["prompt"], r["answer"], 1 << 30).input_ids],
                         device=device) for r in rows]


def _layer_of(name: str) -> str:
    """The transformer layer a weight belongs to (``model.layers.3.``), or the name itself."""
    parts = name.split(".")
    for i, p in enumerate(parts):
        if p.isdigit():
            return ".".join(parts[:i + 1]) + "."
    return name


class LayerwiseHessians(Mapping):
    """``collect_hessians`` one layer at a time, on demand, keyed like it: only the layer
    asked for last is held (a 7B model's second moments are ~15 GB all at once). Each layer
    costs one pass over ``batches``; compression reads matrices layer by layer (twice in the
    budget mode), so a model of L layers costs about 2L passes over a few dozen rows.
    The statistics are float32 on the CPU, wherever the model runs."""

    def __init__(self, model: torch.nn.Module, batches: Iterable[torch.Tensor]):
        self.model, self.batches = model, list(batches)
        self.names = sorted(f"{n}.weight" for n, m in model.named_modules()
                            if isinstance(m, (torch.nn.Linear, torch.nn.Embedding)))
        self.tokens = sum(int(b.numel()) for b in self.batches)
        self._layer: str | None = None
        self._held: dict[str, torch.Tensor] = {}

    def __getitem__(self, name: str) -> torch.Tensor:
        layer = _layer_of(name)
        if layer != self._layer:
            self._held = {}
            group = {n for n in self.names if _layer_of(n) == layer}
            if name in group:
                self._held = {k: v.float().cpu() for k, v in
                              collect_hessians(self.model, self.batches, group).items()}
            self._layer = layer
        return self._held[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


def skill_calibration(model: torch.nn.Module, tokenizer, rows: list[dict],
                      limit: int = CALIBRATION_ROWS) -> LayerwiseHessians:
    """The second moments GPTQ needs, from the first ``limit`` training rows through the base
    model (the inputs the pack's layers will see, before the pack moves them)."""
    device = next(model.parameters()).device
    return LayerwiseHessians(model, row_batches(tokenizer, rows[:limit], device))
