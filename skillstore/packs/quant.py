"""Group-wise integer quantization of matrix rows: round-to-nearest and GPTQ-style calibration."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

import torch


@dataclass(frozen=True)
class Grid:
    """Per-(row, group) affine grid: value = min + code * scale, codes in 0..2**bits - 1."""

    scale: torch.Tensor  # (rows, groups) fp16
    low: torch.Tensor    # (rows, groups) fp16
    bits: int
    group_size: int

    def expand(self, cols: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Scale and low per entry, as float32 tensors of shape (rows, cols)."""
        s = self.scale.float().repeat_interleave(self.group_size, dim=1)[:, :cols]
        lo = self.low.float().repeat_interleave(self.group_size, dim=1)[:, :cols]
        return s, lo


def make_grid(x: torch.Tensor, bits: int, group_size: int) -> Grid:
    """Min-max grid for each group of ``group_size`` consecutive entries of each row."""
    rows, cols = x.shape
    groups = -(-cols // group_size)
    pad = groups * group_size - cols
    xp = torch.nn.functional.pad(x.float(), (0, pad), value=0.0) if pad else x.float()
    xg = xp.reshape(rows, groups, group_size)
    if pad:  # padding must not widen the last group's range: use its own values instead
        last = x[:, (groups - 1) * group_size:].float()
        xg[:, -1, group_size - pad:] = last[:, :1]
    low, high = xg.amin(-1), xg.amax(-1)
    scale = ((high - low) / (2**bits - 1)).half()
    # a range too small for fp16 (it underflows to 0) is a constant group: any step will do
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return Grid(scale, low.half(), bits, group_size)


def quantize(x: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Round-to-nearest codes (int64) of ``x`` on ``grid``."""
    s, lo = grid.expand(x.shape[1])
    return torch.clamp(torch.round((x.float() - lo) / s), 0, 2**grid.bits - 1).to(torch.int64)


def dequantize(codes: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Float32 values of ``codes`` (rows, cols) on ``grid``, without per-entry grid copies
    when the groups tile the columns exactly."""
    rows, cols = codes.shape
    groups = grid.scale.shape[1]
    if cols != groups * grid.group_size:
        s, lo = grid.expand(cols)
        return lo + codes.float() * s
    out = codes.reshape(rows, groups, grid.group_size).float()
    out.mul_(grid.scale.float()[..., None]).add_(grid.low.float()[..., None])
    return out.reshape(rows, cols)


class GptqCodes(NamedTuple):
    """What GPTQ stored: integer codes, the grids it chose, and the values they decode to."""

    codes: torch.Tensor   # (rows, cols) int64
    scale: torch.Tensor   # (rows, groups) fp16
    low: torch.Tensor     # (rows, groups) fp16
    values: torch.Tensor  # (rows, cols) float32: ``dequantize`` of the codes, bit for bit


def _minmax(x: torch.Tensor, qmax: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``make_grid``'s fp16 (scale, low) of each row of ``x``, with ``qmax`` levels per row."""
    low, high = x.amin(1), x.amax(1)
    scale = ((high - low) / qmax).half()
    return torch.where(scale > 0, scale, torch.ones_like(scale)), low.half()


def gptq(weight: torch.Tensor, hessian: torch.Tensor, bits, group_size: int, *,
         damp: float = 0.01, block: int = 128) -> GptqCodes:
    """GPTQ (Frantar et al. 2022): quantize columns in order, pushing each column's error
    onto the columns not yet quantized so that ``X @ W.T`` changes least for inputs with
    second moment ``hessian``; ``bits`` is one width, or one per row.

    Each row's groups of ``group_size`` consecutive columns get min-max grids (as
    ``make_grid``), each made from the values GPTQ has when it reaches the group, after the
    error of earlier columns was pushed on. The codes and grids are returned as they are, so
    that a reader decodes exactly GPTQ's output: re-quantizing that output on new grids
    undoes its error compensation.
    """
    w = weight.float().clone()
    rows, cols = w.shape
    qmax = (2 ** torch.as_tensor(bits, dtype=torch.int64) - 1).float().expand(rows).contiguous()
    h = hessian.double().clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += damp * torch.mean(torch.diag(h)) * torch.eye(cols, dtype=h.dtype)
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)),
                                 upper=True).float()
    block = group_size * max(1, block // group_size)  # a group lies in one block: its grid
    shape = (rows, -(-cols // group_size))            # sees the values updated so far
    scale = torch.empty(shape, dtype=torch.float16)
    low = torch.empty(shape, dtype=torch.float16)
    codes = torch.empty(rows, cols, dtype=torch.int64)
    values = torch.empty(rows, cols)
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        w1 = w[:, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        h1 = hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col, j = w1[:, i], i1 + i
            g = j // group_size
            if j % group_size == 0:
                scale[:, g], low[:, g] = _minmax(w1[:, i:i + group_size], qmax)
            s, lo = scale[:, g].float(), low[:, g].float()
            q = torch.minimum(torch.round((col - lo) / s).clamp_min(0), qmax)
            deq = lo + q * s
            codes[:, j], values[:, j] = q.to(torch.int64), deq
            e = (col - deq) / h1[i, i]
            w1[:, i:] -= e.unsqueeze(1) * h1[i, i:].unsqueeze(0)
            err1[:, i] = e
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    return GptqCodes(codes, scale, low, values)


def collect_hessians(model: torch.nn.Module, batches: Iterable[torch.Tensor],
                     names: set[str] | None = None) -> dict[str, torch.Tensor]:
    """Input second moments ``X.T @ X`` of every nn.Linear, and token counts (1-D, one per
    row) of every nn.Embedding, keyed by the weight's name: how much each layer's output
    moves per unit of weight error on these inputs.

    ``batches`` are input-id tensors run through ``model``; a few hundred tokens suffice.
    """
    sums: dict[str, torch.Tensor] = {}
    hooks = []

    def hook_for(key: str):
        def hook(_mod, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            sums[key] = sums.get(key, 0) + x.T @ x
        return hook

    def count_for(key: str, rows: int):
        def hook(_mod, args):
            ids = args[0].detach().reshape(-1)
            sums[key] = sums.get(key, 0) + torch.bincount(ids, minlength=rows).float()
        return hook

    for mod_name, mod in model.named_modules():
        key = f"{mod_name}.weight"
        if names is not None and key not in names:
            continue
        if isinstance(mod, torch.nn.Linear):
            hooks.append(mod.register_forward_pre_hook(hook_for(key)))
        elif isinstance(mod, torch.nn.Embedding):
            hooks.append(mod.register_forward_pre_hook(count_for(key, mod.num_embeddings)))
    try:
        with torch.no_grad():
            for ids in batches:
                model(input_ids=ids)
    finally:
        for h in hooks:
            h.remove()
    return sums

