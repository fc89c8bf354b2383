"""Budget mode: give each matrix the directions and bit widths that minimise the error in N% bytes.

The allocation reads only spectra (``spectrum.measure``): per matrix, the error of leaving each
singular direction out and of keeping it at each width, and for embeddings the error left by
keeping its largest rows whole. For a price ``lam`` per byte every matrix takes, per direction,
the width that minimises ``relative error + lam * bytes`` (widths never rise along the
spectrum), or its best row-sparse layout where that costs less; ``lam`` is the smallest (by
bisection) for which the whole fits the budget. Errors are relative to each matrix's own
energy, so a matrix counts by how much of its change is lost, not by its norm: on the zoo an
allocation by absolute error starved the small attention deltas the skills depend on.

With an ``energy`` target per role a matrix stops taking bytes once it keeps that fraction of
its energy: a low-rank delta is kept nearly exactly and the rest of the budget stays unspent.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from .bitpack import packed_nbytes
from .codec_protocol import Encoded
from .codecs import MagnitudePrune, MixedPrecisionLowRank, _index_width
from .spectrum import BITS, GROUP, Spectrum, direction_bytes, factors

LOG_LAM = (-18.0, 6.0)  # log10 of the price per byte, relative error per byte
STEPS = 50


@dataclass(frozen=True)
class Choice:
    """One matrix's encoding: ``blocks`` of (directions, bits) of its spectrum, or its
    ``rows`` largest rows whole; neither means the matrix is left out."""

    name: str
    shape: tuple[int, int]
    blocks: tuple[tuple[int, int], ...] = ()
    rows: int = 0
    row_tol: float = 0.0
    err2: float = 0.0  # predicted, in the spectrum's measure

    def codec(self, calibrated: bool = False):
        if self.rows:
            return MagnitudePrune(layout="rows", row_tol=self.row_tol)
        if not self.blocks:
            return None
        k = sum(c for c, _ in self.blocks)
        return MixedPrecisionLowRank(rank=k, schedule=tuple((c / k, b) for c, b in self.blocks),
                                     group_size=GROUP, calibrated=calibrated)

    def payload(self) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
        """The payload tensors this encoding writes, by key: dtype and shape."""
        m, n = self.shape
        if self.rows:
            return {"rows": (torch.uint8, (packed_nbytes(self.rows, _index_width(m)),)),
                    "values": (torch.float16, (self.rows, n))}
        if not self.blocks:
            return {}
        codes = sum(packed_nbytes(c * cols, b) for c, b in self.blocks for cols in (m, n))
        grid = sum(2 * c * math.ceil(cols / GROUP) for c, _ in self.blocks for cols in (m, n))
        return {"codes": (torch.uint8, (codes,)), "grid": (torch.float16, (grid,)),
                "gain": (torch.float32, (2,))}

    @property
    def nbytes(self) -> int:
        """The payload bytes of this encoding, from the sizes alone."""
        return sum(math.prod(shape) * dt.itemsize for dt, shape in self.payload().values())


def planned(choice: Choice, calibrated: bool = False) -> tuple[object, Encoded] | None:
    """The codec and an encoding of ``choice`` as ``encode`` will make it, its payload on the
    meta device (dtypes and shapes, no data): for the manifest's size before any encoding.
    None where the matrix is left out."""
    codec = choice.codec(calibrated=calibrated)
    if codec is None:
        return None
    info = ({"layout": "rows", "count": choice.rows} if choice.rows else
            {"blocks": [list(b) for b in choice.blocks], "calibrated": calibrated})
    return codec, Encoded({k: torch.empty(shape, dtype=dt, device="meta")
                           for k, (dt, shape) in choice.payload().items()}, info)


def encode(choice: Choice, spectrum: Spectrum, delta: torch.Tensor,
           hessian: torch.Tensor | None = None) -> Encoded:
    """The second pass for one matrix: the same factors as the first, encoded as chosen.

    With ``hessian`` (the layer's input second moment) the right factor is quantised by GPTQ
    (``codecs.gptq_factors``) instead of round-to-nearest: the same blocks, so the same bytes,
    with GPTQ's own codes and grids stored."""
    codec = choice.codec(calibrated=hessian is not None)
    if choice.rows:
        enc = codec.encode(choice.name, delta)
        assert enc.info.get("count") == choice.rows, (choice.name, enc.info)
        return enc
    u, s, vh = factors(spectrum.name, delta, spectrum.rank, spectrum.method)
    return codec.encode(choice.name, delta, hessian=hessian, factors=(u, s, vh))


class _Priced:
    """One spectrum as tables of relative error and bytes, for quick picks at any price."""

    def __init__(self, sp: Spectrum, entry_bytes: float = 0.0):
        self.sp = sp
        self.entry = entry_bytes  # what the matrix adds to the header once it is in the pack
        scale = 1 / sp.norm2 if sp.norm2 > 0 else 0.0
        self.err = torch.cat([sp.drop[:, None], sp.quant], 1).double() * scale  # (k, 1 + widths)
        self.bytes = torch.cat([torch.zeros(1, dtype=torch.float64), direction_bytes(sp.shape)])
        self.tail = sp.tail * scale
        self.rows_err = self.rows_bytes = None
        if sp.rows is not None:
            ok = ~torch.isnan(sp.row_tols)
            count = torch.arange(1, sp.rows.numel() + 1, dtype=torch.float64)
            m, n = sp.shape
            self.rows_err = torch.where(ok, sp.rows.double() * scale, torch.inf)
            self.rows_bytes = count * 2 * n + torch.ceil(count * _index_width(m) / 8)
        self.floor = -math.inf  # log10 price below which the energy target is already met

    def pick(self, log_lam: float) -> tuple[float, float, object]:
        """(relative error, bytes, how) at this price; ``how`` is widths per direction or a
        row count."""
        lam = 10 ** max(log_lam, self.floor)
        idx = (self.err + lam * self.bytes).argmin(1)
        idx = torch.cummin(idx, 0).values  # widths never rise along the spectrum
        err = float(self.err.gather(1, idx[:, None]).sum()) + self.tail
        size = float(self.bytes[idx].sum()) + (8.0 + self.entry if bool((idx > 0).any()) else 0.0)
        best = (err, size, idx)
        if self.rows_err is not None:
            cost = self.rows_err + lam * (self.rows_bytes + self.entry)
            r = int(cost.argmin())
            if float(cost[r]) < err + lam * size:
                best = (float(self.rows_err[r]), float(self.rows_bytes[r]) + self.entry, r + 1)
        return best

    def set_target(self, rel_err2: float) -> None:
        """The highest price at which the matrix still meets the target, or none."""
        lo, hi = LOG_LAM
        if self.pick(lo)[0] > rel_err2:
            return
        for _ in range(STEPS):
            mid = (lo + hi) / 2
            if self.pick(mid)[0] <= rel_err2:
                lo = mid
            else:
                hi = mid
        self.floor = lo

    def choice(self, log_lam: float) -> Choice:
        err, _, how = self.pick(log_lam)
        sp = self.sp
        if isinstance(how, int):
            return Choice(sp.name, sp.shape, rows=how, row_tol=float(sp.row_tols[how - 1]),
                          err2=err * sp.norm2)
        blocks: list[list[int]] = []
        for j in how.tolist():
            if j == 0:
                break
            if blocks and blocks[-1][1] == BITS[j - 1]:
                blocks[-1][0] += 1
            else:
                blocks.append([1, BITS[j - 1]])
        return Choice(sp.name, sp.shape, tuple((c, b) for c, b in blocks), err2=err * sp.norm2)


def allocate(spectra: Mapping[str, Spectrum], budget_bytes: float,
             energy: Mapping[str, float] | None = None,
             entry_bytes: float = 0.0) -> dict[str, Choice]:
    """The choice per matrix that minimises the summed relative error within
    ``budget_bytes``, each matrix spending no more than its role's ``energy`` target needs.
    A matrix that is kept costs ``entry_bytes`` more (its manifest entry), so where the
    budget is tight a matrix is kept only when that is worth its entry."""
    priced = [_Priced(sp, entry_bytes) for sp in spectra.values()]
    for p in priced:
        keep = (energy or {}).get(p.sp.role)
        if keep is not None:
            p.set_target(1 - keep)

    def size(log_lam: float) -> float:
        return sum(p.pick(log_lam)[1] for p in priced)

    lo, hi = LOG_LAM
    if size(hi) > budget_bytes:  # only when nothing fits at all: every matrix is left out
        warnings.warn(f"The budget of {budget_bytes:.0f} bytes leaves nothing for the "
                      "compressed matrices; they are left out of the pack.", stacklevel=2)
    if size(lo) > budget_bytes:
        for _ in range(STEPS):
            mid = (lo + hi) / 2
            if size(mid) <= budget_bytes:
                hi = mid
            else:
                lo = mid
    else:
        hi = lo
    return {p.sp.name: p.choice(hi) for p in priced}
