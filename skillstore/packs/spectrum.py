"""Pass one of the budget mode: a matrix's spectrum and what each direction costs at each width.

``measure`` reads one delta and keeps a few floats per singular direction: the error its
omission adds, and the error it leaves when its two factor rows are quantised at each width
of ``BITS`` (group-wise min-max grids of ``GROUP`` entries, as ``mplr`` stores them). The
factors themselves are dropped; ``factors`` gives the same ones again, bit for bit, when the
second pass encodes the matrix, because it is the same deterministic computation (one thread,
randomised range finders seeded by the tensor's name).

With quantised factors ``A = sqrt(S) Uᵀ + dA`` and ``B = sqrt(S) Vᵀ + dB``, the error of the
product is ``Σᵢ sᵢ (‖dAᵢ‖² + ‖dBᵢ‖²)`` up to cross terms of random sign, because the rows of
``U`` and of ``V`` are orthonormal; each row is quantised on its own grids, so the error of
direction i at width b is measured once, alone, and is additive over directions.
"""

from __future__ import annotations

import math
import threading
import zlib
from dataclasses import dataclass

import torch

from . import quant
from .codecs import svd
from .roles import EMBEDDING
from .slabs import slabs

BITS = (2, 3, 4, 5, 6, 8)  # 1-bit blocks broke the zoo's reconstructions (docs/skillpack.md)
GROUP = 64
OVERSAMPLE = 16
POWER_ITERS = 2
PROBE_RANK = 32  # directions tried first where an energy target may make do with few
_GLOBAL_RNG = threading.Lock()
SLAB = 1 << 21  # entries quantised per step: int64 codes of a 150k-wide block would be GBs


@dataclass(frozen=True)
class Spectrum:
    """What the allocation needs of one matrix; errors are squared and absolute (output
    errors on the calibration inputs when a sensitivity was given, else weight errors)."""

    name: str
    role: str
    shape: tuple[int, int]
    norm2: float  # the matrix's energy, measured the same way as the errors
    drop: torch.Tensor  # (k,) error added by leaving direction i out
    quant: torch.Tensor  # (k, len(BITS)) error of direction i kept at each width
    tail: float  # error of the directions beyond the k measured
    rank: int  # directions computed (``factors`` must be asked for the same)
    method: str  # "full" (Gram eigenproblem) or "randomized" (seeded svd_lowrank)
    rows: torch.Tensor | None = None  # (r,) error left keeping the r+1 largest rows
    row_tols: torch.Tensor | None = None  # (r,) MagnitudePrune row_tol keeping them (NaN: a tie)

    @property
    def k(self) -> int:
        return self.drop.numel()


def direction_bytes(shape: tuple[int, int]) -> torch.Tensor:
    """Bytes of one direction at each width: both factor rows' codes, fp16 scale and low."""
    m, n = shape
    groups = math.ceil(m / GROUP) + math.ceil(n / GROUP)
    return torch.tensor([(m + n) * b / 8 + 4 * groups for b in BITS], dtype=torch.float64)


def rank_cap(shape: tuple[int, int], budget: float) -> int:
    """The most directions the allocation could give a matrix: what twice its share of the
    budget buys at 2 bits (so the cap scales with the budget, not with a fixed number)."""
    m, n = shape
    return max(1, min(min(m, n), math.ceil(16 * budget * m * n / (m + n))))


def factors(name: str, delta: torch.Tensor, rank: int, method: str
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The leading ``rank`` directions (U, S, Vh) of ``delta``, the same on every call."""
    if method == "full":
        u, s, vh = svd(delta, rank)
        return u, s[:rank], vh
    # svd_lowrank draws its test matrix from the global generator: seed it by name, and
    # leave the caller's random state as it was; one at a time, as compress_checkpoint
    # encodes several tensors at once on threads that share that generator
    with _GLOBAL_RNG, torch.random.fork_rng(devices=[]):
        torch.manual_seed(zlib.crc32(name.encode()))
        u, s, v = torch.svd_lowrank(delta.float(), q=min(rank + OVERSAMPLE, min(delta.shape)),
                                    niter=POWER_ITERS)
    return u[:, :rank].contiguous(), s[:rank].contiguous(), v[:, :rank].T.contiguous()


def measure(name: str, role: str, delta: torch.Tensor, *, budget: float,
            energy: float | None = None, sensitivity: torch.Tensor | None = None) -> Spectrum:
    """The spectrum of one 2-D delta, priced for the allocation.

    Where an ``energy`` target is set, ``PROBE_RANK`` directions from a seeded randomised
    SVD are tried first: if they leave well under the target's error, the matrix never
    needs more and no full decomposition is made. Otherwise the directions up to
    ``rank_cap`` come from a randomised SVD where that is small against the matrix, else
    from the full one.
    """
    d = delta.float()
    m, n = d.shape
    short = min(m, n)
    left, right = _weights(sensitivity, d)
    norm2 = _energy(d, left, right)
    plain2 = norm2 if left is None and right is None else _energy(d, None, None)
    cap = rank_cap((m, n), budget)
    plan = []
    if energy is not None and PROBE_RANK < cap and PROBE_RANK + OVERSAMPLE <= short // 4:
        plan.append((PROBE_RANK, "randomized"))
    plan.append((cap, "randomized" if cap + OVERSAMPLE <= short // 4 else "full"))
    for i, (rank, method) in enumerate(plan):
        u, s, vh = factors(name, d, rank, method)
        if i + 1 == len(plan):
            break
        tail = plain2 - float((s.double() ** 2).sum())  # what the probe's directions leave
        if tail <= 0.1 * (1 - energy) * plain2:
            break
    drop, tables = _price(u, s, vh, left, right)
    spectrum = dict(name=name, role=role, shape=(m, n), norm2=norm2, drop=drop, quant=tables,
                    tail=max(0.0, norm2 - float(drop.sum())), rank=rank, method=method)
    if role == EMBEDDING:
        spectrum["rows"], spectrum["row_tols"] = _row_curve(d, left, right, norm2)
    return Spectrum(**spectrum)


def _weights(sensitivity, d):
    """(left, right): per-row weights (an embedding's token counts) or the input second
    moment of a linear layer, where the sensitivity fits the matrix."""
    if sensitivity is None:
        return None, None
    if sensitivity.dim() == 1 and sensitivity.shape[0] == d.shape[0]:
        return sensitivity.double(), None
    if sensitivity.dim() == 2 and tuple(sensitivity.shape) == (d.shape[1], d.shape[1]):
        return None, sensitivity.double()
    return None, None


def _row_energy(rows: torch.Tensor, left, right) -> torch.Tensor:
    x = rows.double()
    return ((x @ right) * x).sum(1) if right is not None else (x * x).sum(1)


def _energy(d, left, right) -> float:
    total = 0.0
    for sl in slabs(d.shape[0], d.shape[1], SLAB):
        e = _row_energy(d[sl], left, right)
        total += float((e * left[sl]).sum() if left is not None else e.sum())
    return total


def _quant_err(rows: torch.Tensor, weigh) -> torch.Tensor:
    """(rows, len(BITS)): the weighted squared error of each row quantised at each width."""
    gain = rows.abs().max().clamp_min(1e-30)
    x = rows / gain
    out = torch.empty(rows.shape[0], len(BITS), dtype=torch.float64)
    for j, bits in enumerate(BITS):
        grid = quant.make_grid(x, bits, GROUP)
        err = (quant.dequantize(quant.quantize(x, grid), grid) - x) * gain
        out[:, j] = weigh(err)
    return out


def _row_sum_sq(e: torch.Tensor) -> torch.Tensor:
    """Each row's sum of squares, summed in float64 without a float64 copy of ``e``."""
    return (e * e).sum(1, dtype=torch.float64)


def _price(u, s, vh, left, right):
    """Per direction: the error of dropping it, and of keeping it at each width."""
    s64 = s.double()
    k = s.numel()
    ell = torch.ones(k, dtype=torch.float64)
    if left is not None:  # u_i^T C u_i, a slab of rows at a time
        ell = sum((u[sl].double().pow(2) * left[sl, None]).sum(0) for sl in slabs(*u.shape, SLAB))
    v64 = vh.double()
    r = ((v64 @ right) * v64).sum(1) if right is not None else torch.ones(k, dtype=torch.float64)
    drop = s64.pow(2) * ell * r
    sq = s.sqrt()
    err_a = torch.empty(k, len(BITS), dtype=torch.float64)
    err_b = torch.empty(k, len(BITS), dtype=torch.float64)
    width = max(u.shape[0], vh.shape[1])
    for sl in slabs(k, width, SLAB):
        a = (u[:, sl] * sq[sl]).T.contiguous()
        b = sq[sl, None] * vh[sl]
        err_a[sl] = _quant_err(a, lambda e: ((e.double() ** 2) * left).sum(1)
                               if left is not None else _row_sum_sq(e))
        err_b[sl] = _quant_err(b, lambda e: ((e.double() @ right) * e.double()).sum(1)
                               if right is not None else _row_sum_sq(e))
    tables = s64[:, None] * (err_a * r[:, None] + ell[:, None] * err_b)
    return drop, tables


def _row_curve(d, left, right, norm2):
    """Keeping the r largest rows (by norm, as MagnitudePrune's rows layout picks them):
    the error left, and the row_tol that keeps exactly those rows."""
    norms = d.norm(dim=1)
    order = torch.sort(norms, descending=True, stable=True)
    changed = int((order.values > 0).sum())
    if changed == 0:
        return None, None
    idx = order.indices[:changed]
    energy = torch.cat([_row_energy(d[idx[sl]], left, right)
                        for sl in slabs(changed, d.shape[1], SLAB)])
    if left is not None:
        energy = energy * left[idx]
    err = (norm2 - torch.cumsum(energy, 0)).clamp_min(0.0)
    top = order.values[0]
    vals = order.values[:changed].double()
    nxt = torch.cat([order.values[1:changed + 1].double(),
                     torch.zeros(1 if changed == d.shape[0] else 0, dtype=torch.float64)])
    tols = (vals + nxt) / 2 / float(top)
    thr = (tols.float() * top).float()  # what the codec compares its norms with
    ok = (order.values[:changed] > thr) & (nxt.float() <= thr)
    return err, torch.where(ok, tols, torch.full_like(tols, float("nan")))
