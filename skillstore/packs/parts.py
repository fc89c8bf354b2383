"""Decoded pack contents: one delta per tensor as low-rank factors, sparse entries or dense."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LowRankPart:
    """delta = U @ V, with U (out, r) and V (r, in): float32 as decoded, the base's dtype
    once made ready for hooks (``hooks.prepare``)."""

    name: str
    U: torch.Tensor
    V: torch.Tensor

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.U.shape[0], self.V.shape[1])

    @property
    def rank(self) -> int:
        return self.U.shape[1]

    def to_dense(self) -> torch.Tensor:
        return self.U @ self.V

    def add_to(self, weight: torch.Tensor, scale: float = 1.0) -> None:
        """weight += scale * U @ V, computed in float32 and stored in the weight's dtype."""
        w = weight.data
        if w.dtype == torch.float32 and w.dim() == 2:  # in place, no dense temporary
            w.addmm_(self.U.to(w.device, torch.float32), self.V.to(w.device, torch.float32),
                     alpha=scale)
        else:
            _add(weight, self.to_dense(), scale)

    def added(self, weight: torch.Tensor, scale: float = 1.0,
              out: torch.Tensor | None = None) -> torch.Tensor:
        """weight + scale * U @ V in a new tensor, or in ``out`` (a spare of the same shape and
        dtype): one pass over the weight, which is left untouched."""
        w = weight.data
        u, v = self.U.to(w.device, torch.float32), self.V.to(w.device, torch.float32)
        if w.dtype == torch.float32 and w.dim() == 2:
            return torch.addmm(w, u, v, alpha=scale, out=out)
        return torch.addmm(w.float().reshape(self.shape), u, v, alpha=scale
                           ).reshape(w.shape).to(w.dtype)


@dataclass(frozen=True)
class SparsePart:
    """delta is zero except at flat ``indices`` (int64), where it is ``values`` (float32)."""

    name: str
    indices: torch.Tensor
    values: torch.Tensor
    shape: tuple[int, ...]

    def to_dense(self) -> torch.Tensor:
        out = torch.zeros(self.shape, dtype=torch.float32).reshape(-1)
        out[self.indices] = self.values
        return out.reshape(self.shape)

    def add_to(self, weight: torch.Tensor, scale: float = 1.0) -> None:
        flat = weight.data.view(-1)
        idx = self.indices.to(flat.device)
        new = flat[idx].float() + scale * self.values.to(flat.device)
        flat[idx] = new.to(flat.dtype)

    def added(self, weight: torch.Tensor, scale: float = 1.0,
              out: torch.Tensor | None = None) -> torch.Tensor:
        out = weight.data.clone() if out is None else out.copy_(weight.data)
        self.add_to(out, scale)
        return out


@dataclass(frozen=True)
class DensePart:
    """delta as one tensor: float32 as decoded, the base's dtype once ready for hooks."""

    name: str
    tensor: torch.Tensor

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.tensor.shape)

    def to_dense(self) -> torch.Tensor:
        return self.tensor

    def add_to(self, weight: torch.Tensor, scale: float = 1.0) -> None:
        _add(weight, self.tensor, scale)

    def added(self, weight: torch.Tensor, scale: float = 1.0,
              out: torch.Tensor | None = None) -> torch.Tensor:
        w = weight.data
        delta = self.tensor.to(w.device).reshape(w.shape)
        if w.dtype == torch.float32:
            return torch.add(w, delta, alpha=scale, out=out)
        return torch.add(w.float(), delta, alpha=scale).to(w.dtype)


Part = LowRankPart | SparsePart | DensePart


def _add(weight: torch.Tensor, delta: torch.Tensor, scale: float) -> None:
    w = weight.data
    delta = delta.to(w.device).reshape(w.shape)
    if w.dtype == torch.float32:
        w.add_(delta, alpha=scale)
    else:
        w.copy_((w.float() + scale * delta).to(w.dtype))
