"""Budget mode: pick rank and bits per module to minimise reconstruction error within N% bytes."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from .codecs import Encoded, MagnitudePrune, MixedPrecisionLowRank, svd
from .parts import LowRankPart
from .roles import EMBEDDING

RANKS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
SCHEDULES = (((1.0, 8),), ((0.5, 8), (0.5, 4)), ((0.25, 8), (0.25, 4), (0.5, 2)),
             ((0.5, 4), (0.5, 2)))
KEEPS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2)


@dataclass(frozen=True)
class Candidate:
    codec: object
    encoded: Encoded
    err2: float  # what the allocation minimises: squared weight error, or output error
    weight_err2: float | None = None  # the squared weight error when err2 is an output error

    @property
    def weight_error2(self) -> float:
        return self.err2 if self.weight_err2 is None else self.weight_err2

    @property
    def nbytes(self) -> int:
        return self.encoded.nbytes


def _lowrank_err2(d: torch.Tensor, norm2: float, part: LowRankPart) -> float:
    """||d - U V||^2 = ||d||^2 - 2 tr(U^T d V^T) + tr(U^T U V V^T), without forming U V."""
    u, v = part.U.double(), part.V.double()
    cross = float(((d.double() @ v.T) * u).sum())
    return max(0.0, norm2 - 2 * cross + float(((u.T @ u) * (v @ v.T)).sum()))


def _front(found: list[Candidate]) -> list[Candidate]:
    found = sorted(found, key=lambda c: (c.nbytes, c.err2))
    front, best = [], float("inf")
    for c in found:
        if c.err2 < best:
            front.append(c)
            best = c.err2
    return front


def output_err2(err: torch.Tensor, sensitivity: torch.Tensor) -> float:
    """Squared output error of a weight error on the calibration inputs: tr(E H E^T) for a
    linear layer's input second moment H, or sum_i count_i ||E_i||^2 for an embedding's
    token counts (a 1-D sensitivity)."""
    e = err.double()
    if sensitivity.dim() == 1:
        return float((e.pow(2).sum(1) * sensitivity.double()).sum())
    return float(((e @ sensitivity.double()) * e).sum())


def sensitivity_fits(sensitivity: torch.Tensor | None, delta: torch.Tensor) -> bool:
    if sensitivity is None or delta.dim() != 2:
        return False
    if sensitivity.dim() == 1:
        return sensitivity.shape[0] == delta.shape[0]
    return tuple(sensitivity.shape) == (delta.shape[1], delta.shape[1])


def candidates(name: str, role: str, delta: torch.Tensor,
               sensitivity: torch.Tensor | None = None) -> list[Candidate]:
    """The Pareto front (fewer bytes or less error) of the operators tried for one module.

    Low-rank candidates are first ranked by a cheap estimate (SVD tail energy plus the
    quantization error of the kept directions); the exact error is computed for the
    survivors only. With a ``sensitivity`` (calibration statistics, see
    quant.collect_hessians) the error is the layer's output error on the calibration
    inputs instead of the weight error, so the budget goes where the outputs move most.
    """
    d = delta.float()
    norm2 = float((d.double() ** 2).sum())
    weigh = sensitivity if sensitivity_fits(sensitivity, d) else None
    sparse = []
    if role == EMBEDDING:  # sparse layouts, competing with the low-rank ones below
        codecs = [MagnitudePrune(keep=k, layout="entries") for k in KEEPS]
        codecs.append(MagnitudePrune(layout="rows"))
        for codec in codecs:
            enc = codec.encode(name, d)
            rec = codec.decode(name, tuple(d.shape), enc.info, enc.tensors).to_dense()
            w_err2 = float(((d - rec) ** 2).sum())
            sparse.append(Candidate(codec, enc, output_err2(d - rec, weigh), w_err2)
                          if weigh is not None else Candidate(codec, enc, w_err2))
    u, s, vh = svd(d)
    energy = torch.cumsum((s.double() ** 2).flip(0), 0).flip(0)  # energy[k] = tail from k
    top = min(d.shape)
    estimated = []
    for r in sorted({min(r, top) for r in RANKS}):
        for sched in SCHEDULES:
            codec = MixedPrecisionLowRank(rank=r, schedule=sched, calibrated=False)
            enc = codec.encode(name, d, factors=(u, s, vh))
            part = codec.decode(name, tuple(d.shape), enc.info, enc.tensors)
            k = part.rank
            kept = (u[:, :k] * s[:k]).double()
            a, b = part.U.double(), part.V.double()
            # ||U_k S_k V_k^T - A B||^2 in k x k products, plus the dropped tail
            g = float(((kept.T @ kept) * (vh[:k].double() @ vh[:k].double().T)).sum())
            c = float(((kept.T @ a) * (vh[:k].double() @ b.T)).sum())
            q = float(((a.T @ a) * (b @ b.T)).sum())
            tail = float(energy[k]) if k < energy.numel() else 0.0
            estimated.append(Candidate(codec, enc, max(0.0, g - 2 * c + q) + tail))
    exact = []
    for c in _front(estimated):
        part = c.codec.decode(name, tuple(d.shape), c.encoded.info, c.encoded.tensors)
        w_err2 = _lowrank_err2(d, norm2, part)
        exact.append(Candidate(c.codec, c.encoded, output_err2(d - part.to_dense(), weigh), w_err2)
                     if weigh is not None else Candidate(c.codec, c.encoded, w_err2))
    return _front(exact + sparse)


def choose(options: dict[str, list[Candidate]], budget_bytes: float) -> dict[str, Candidate]:
    """Lagrangian allocation: each module takes argmin(err2 + lam * bytes); lam is the
    smallest (by bisection) for which the total fits the budget."""
    def pick(lam: float) -> dict[str, Candidate]:
        return {n: min(cs, key=lambda c: c.err2 + lam * c.nbytes) for n, cs in options.items()}

    def size(sel) -> int:
        return sum(c.nbytes for c in sel.values())

    smallest = {n: cs[0] for n, cs in options.items()}
    if size(smallest) > budget_bytes:
        warnings.warn(f"The budget of {budget_bytes:.0f} bytes is below the smallest encoding "
                      f"({size(smallest)} bytes); using the smallest.", stacklevel=2)
        return smallest
    lo, hi = -40.0, 40.0  # log10 of lam
    if size(pick(10**lo)) <= budget_bytes:
        return pick(10**lo)
    for _ in range(80):
        mid = (lo + hi) / 2
        if size(pick(10**mid)) <= budget_bytes:
            hi = mid
        else:
            lo = mid
    return pick(10**hi)
