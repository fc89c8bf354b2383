"""Delta codecs, a registry of configured instances: the GraftLLM operators and the baselines."""

from __future__ import annotations

import dataclasses
import zlib
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import ConfigError
from ..registry import Registry
from . import quant
from .bitpack import pack_bits, packed_nbytes, unpack_bits
from .codec_protocol import Codec, Encoded
from .parts import DensePart, LowRankPart, Part, SparsePart
from .slabs import slabs

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def _index_width(count: int) -> int:
    return max(1, (count - 1).bit_length())


CHUNK_ELEMS = 1 << 22  # entries of the long side per step of the Gram and projections (16 MB)


def svd(delta: torch.Tensor, rank: int | None = None
        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD (U, S, Vh), float32; with ``rank``, U and Vh hold only the leading ``rank``
    directions (S stays whole). Large matrices go through the eigenproblem of the smaller Gram
    matrix, several times faster than LAPACK's SVD of the full matrix. It is float32, twice
    the speed of float64: the Gram matrix's rounding (about 1e-7 of the largest
    eigenvalue) blurs only directions whose energy is below that share, far under what any
    quantised code keeps. The kept directions' singular values are not read from the
    eigenvalues but measured as the norms of the projections ``uᵢᵀ x``, to float32's own
    precision, so ``U diag(S) Vh`` is the projection of the matrix onto ``U``'s span. The Gram
    matrix and the projection are built a slab of the long side at a time, so the scratch
    beside the input is the factors plus a few tens of MB."""
    d = delta.float()
    m, n = d.shape
    if min(m, n) < 256:
        u, s, vh = torch.linalg.svd(d, full_matrices=False)
        k = s.numel() if rank is None else min(rank, s.numel())
        return u[:, :k].contiguous(), s, vh[:k].contiguous()
    x = d if m <= n else d.T  # wide: the Gram matrix is the short side's
    short, long = x.shape
    gram = torch.zeros(short, short)
    for cols in slabs(long, short, CHUNK_ELEMS):
        c = x[:, cols]
        gram.addmm_(c, c.T)
    try:
        evals, evecs = torch.linalg.eigh(gram)
    except torch.linalg.LinAlgError:
        # the float32 solver may fail to converge where many eigenvalues are equal (the zeros
        # of a low-rank delta); float64 solves those, at twice the time
        evals, evecs = (t.float() for t in torch.linalg.eigh(gram.double()))
    del gram
    s = evals.flip(0).clamp_min(0).sqrt()
    k = short if rank is None else min(rank, short)
    u = evecs.flip(1)[:, :k].contiguous()
    ut = u.T.contiguous()
    vh = torch.empty(k, long)
    for cols in slabs(long, short, CHUNK_ELEMS):
        vh[:, cols] = ut @ x[:, cols]
    norms = torch.linalg.vector_norm(vh, dim=1)
    s = torch.cat([norms, s[k:]])
    vh *= torch.where(norms > 0, 1 / norms.clamp_min(1e-30), torch.zeros_like(norms))[:, None]
    if m > n:  # a transposed view, not a copy: U of a tall embedding is hundreds of MB
        return vh.T, s, u.T.contiguous()
    return u, s, vh


def _need_2d(codec: str, delta: torch.Tensor) -> None:
    if delta.dim() != 2:
        raise ConfigError(f"Codec {codec!r} needs a 2-D tensor, got shape {tuple(delta.shape)}; "
                          "map this role to 'dense' in the policy.")


@dataclass(frozen=True)
class Dense:
    """The delta itself in 16-bit floats: lossless up to fp16/bf16 rounding."""

    name: str = field(default="dense", init=False)
    dtype: str = "float16"

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ConfigError(f"Dense dtype {self.dtype!r} is not one of {', '.join(DTYPES)}.")

    def encode(self, name: str, delta: torch.Tensor, hessian=None) -> Encoded:
        return Encoded({"w": delta.to(DTYPES[self.dtype]).contiguous()})

    def decode(self, name, shape, info, t) -> Part:
        return DensePart(name, t["w"].float().reshape(shape))


@dataclass(frozen=True)
class LowRank:
    """LoRA-extraction baseline: truncated SVD, one rank everywhere, fp16 factors."""

    name: str = field(default="lowrank", init=False)
    rank: int = 16

    def __post_init__(self):
        if self.rank < 1:
            raise ConfigError(f"LowRank rank must be at least 1, got {self.rank}.")

    def encode(self, name: str, delta: torch.Tensor, hessian=None) -> Encoded:
        _need_2d(self.name, delta)
        u, s, vh = svd(delta, self.rank)
        r = min(self.rank, s.numel())
        sq = s[:r].sqrt()
        return Encoded({"U": (u[:, :r] * sq).half().contiguous(),
                        "V": (sq[:, None] * vh[:r]).half().contiguous()}, {"rank": r})

    def decode(self, name, shape, info, t) -> Part:
        return LowRankPart(name, t["U"].float(), t["V"].float())


@dataclass(frozen=True)
class MixedPrecisionLowRank:
    """GraftLLM's operator: SVD at a fixed rank or energy fraction (capped by max_rank), then the
    singular directions (in order of singular value) in blocks of decreasing bit width, group-wise
    scales, bit-packed. ``schedule`` is ((fraction of rank, bits), ...); 0 bits drops."""

    name: str = field(default="mplr", init=False)
    rank: int | None = 16
    energy: float | None = None
    max_rank: int | None = None
    schedule: tuple[tuple[float, int], ...] = ((0.25, 8), (0.25, 4), (0.5, 2))
    group_size: int = 64
    calibrated: bool = True

    def __post_init__(self):
        object.__setattr__(self, "schedule", tuple((float(f), int(b)) for f, b in self.schedule))
        if (self.rank is None) == (self.energy is None):
            raise ConfigError("mplr needs exactly one of rank or energy; set the other to null.")
        if self.energy is not None and not 0 < self.energy <= 1:
            raise ConfigError(f"mplr energy must be in (0, 1], got {self.energy}.")
        if self.rank is not None and self.rank < 1:
            raise ConfigError(f"mplr rank must be at least 1, got {self.rank}.")
        if abs(sum(f for f, _ in self.schedule) - 1.0) > 1e-6 or any(
                not 0 <= b <= 8 for _, b in self.schedule):
            raise ConfigError(f"mplr schedule {self.schedule} must have fractions summing to 1 "
                              "and bit widths in 0..8.")
        widths = [b for _, b in self.schedule]
        if 0 in widths and any(widths[widths.index(0):]):
            raise ConfigError(f"mplr schedule {self.schedule} drops directions (0 bits) before "
                              "keeping later ones; put the 0-bit blocks last.")

    def blocks(self, k: int) -> list[tuple[int, int]]:
        """(directions, bits) per block for rank k; zero-bit blocks are dropped."""
        out, start, acc = [], 0, 0.0
        for frac, bits in self.schedule:
            acc += frac
            end = k if acc >= 1 - 1e-9 else min(k, round(acc * k))
            if end > start and bits > 0:
                out.append((end - start, bits))
            start = max(start, end)
        return out

    def choose_rank(self, s: torch.Tensor) -> int:
        if self.rank is not None:
            return min(self.rank, s.numel())
        e = torch.cumsum(s.double() ** 2, 0)
        k = int(torch.searchsorted(e, self.energy * e[-1] * (1 - 1e-12)).item()) + 1
        return min(k, self.max_rank or k)

    def encode(self, name: str, delta: torch.Tensor, hessian=None,
               factors: tuple[torch.Tensor, ...] | None = None) -> Encoded:
        _need_2d(self.name, delta)
        u, s, vh = factors or svd(delta, self.rank or self.max_rank)
        blocks = self.blocks(min(self.choose_rank(s), s.numel()))
        k = sum(c for c, _ in blocks)
        if k == 0:
            return Encoded({}, {"blocks": []})
        sq = s[:k].sqrt()
        a, b = (u[:, :k] * sq).T.contiguous(), (sq[:, None] * vh[:k]).contiguous()
        use_h = self.calibrated and hessian is not None and hessian.dim() == 2 and \
            hessian.shape[0] == delta.shape[1]
        sides = (gptq_factors(a, b, hessian.float(), blocks, self.group_size)
                 if use_h else [_rtn_side(mat, blocks, self.group_size) for mat in (a, b)])
        # Three payload tensors per matrix (every block's codes, every grid, both gains), so
        # that a small model's pack is not mostly safetensors header.
        codes, grids, gains = [], [], []
        for side in sides:
            gains.append(side.gain)
            for code, grid in side.blocks:
                codes.append(code)
                grids += [grid.scale.reshape(-1), grid.low.reshape(-1)]
        return Encoded({"codes": torch.cat(codes), "grid": torch.cat(grids),
                        "gain": torch.stack(gains)},
                       {"blocks": [list(x) for x in blocks], "calibrated": use_h})

    def decode(self, name, shape, info, t) -> Part:
        blocks = [tuple(x) for x in info["blocks"]]
        if not blocks:
            return LowRankPart(name, torch.zeros(shape[0], 0), torch.zeros(0, shape[1]))
        if self._batchable(shape, blocks) and not any(v.requires_grad for v in t.values()):
            return self._decode_batch([name], shape, blocks, [t])[0]  # in place: no autograd
        # Rows not a whole number of groups, or blocks not whole bytes: block by block.
        k = sum(c for c, _ in blocks)
        grid_all, gains = t["grid"].float(), t["gain"].float()
        code_at = grid_at = 0
        mats = []
        for j, cols in enumerate((shape[0], shape[1])):
            groups = -(-cols // self.group_size)
            mat = torch.empty(k, cols)
            row = 0
            for count, bits in blocks:
                n_codes, n_grid = packed_nbytes(count * cols, bits), count * groups
                codes = unpack_bits(t["codes"][code_at:code_at + n_codes], bits, count * cols,
                                    torch.uint8)
                grid = grid_all[grid_at:grid_at + 2 * n_grid].view(2, count, groups)
                mat[row:row + count] = quant.dequantize(
                    codes.view(count, cols), quant.Grid(grid[0], grid[1], bits, self.group_size))
                code_at, grid_at, row = code_at + n_codes, grid_at + 2 * n_grid, row + count
            mats.append(mat.mul_(gains[j]))
        return LowRankPart(name, mats[0].T, mats[1])

    def decode_many(self, names, shape, info, payloads) -> list[Part]:
        """``decode`` of several tensors with the same shape and blocks, as one batch: the
        same values bit for bit, with one set of operations instead of one per tensor (a
        model has dozens of same-shaped projections, and each operation has a fixed cost)."""
        blocks = [tuple(x) for x in info["blocks"]]
        if not blocks or not self._batchable(shape, blocks):
            return [self.decode(n, shape, info, t) for n, t in zip(names, payloads, strict=True)]
        return self._decode_batch(names, shape, blocks, payloads)

    def _batchable(self, shape, blocks) -> bool:
        """Whether every row is whole groups and every block whole bytes, so the payloads of
        several tensors can be stacked and each block dequantised in place, in one operation."""
        return not any(cols % self.group_size or count * cols * bits % 8
                       for cols in (shape[0], shape[1]) for count, bits in blocks)

    def _decode_batch(self, names, shape, blocks, payloads) -> list[Part]:
        # Each block is dequantised straight into its rows of one preallocated matrix per
        # side, with the grids converted to float32 once (same values as quant.dequantize).
        n, k, gs = len(names), sum(c for c, _ in blocks), self.group_size
        codes = torch.stack([t["codes"] for t in payloads])
        grid_all = torch.stack([t["grid"] for t in payloads]).float()
        gains = torch.stack([t["gain"] for t in payloads]).float()
        code_at = grid_at = 0
        mats = []
        for j, cols in enumerate((shape[0], shape[1])):
            groups = cols // gs
            mat = torch.empty(n, k, cols)
            row = 0
            for count, bits in blocks:
                n_codes, n_grid = packed_nbytes(count * cols, bits), count * groups
                vals = unpack_bits(codes[:, code_at:code_at + n_codes].reshape(-1), bits,
                                   n * count * cols, torch.uint8)
                grid = grid_all[:, grid_at:grid_at + 2 * n_grid].reshape(n, 2, count, groups)
                out = mat[:, row:row + count].view(n, count, groups, gs)
                torch.mul(vals.view(n, count, groups, gs), grid[:, 0, :, :, None], out=out)
                out.add_(grid[:, 1, :, :, None])
                code_at, grid_at, row = code_at + n_codes, grid_at + 2 * n_grid, row + count
            mats.append(mat.mul_(gains[:, j, None, None]))
        return [LowRankPart(name, mats[0][i].T, mats[1][i]) for i, name in enumerate(names)]


def _row_ranges(blocks):
    start = 0
    for count, bits in blocks:
        yield slice(start, start + count), bits
        start += count


@dataclass(frozen=True)
class FactorCodes:
    """One factor (rows = directions) as stored: per block, its bit-packed codes and grid,
    on the factor divided by ``gain``; ``values`` is what decoding gives, gain included."""

    gain: torch.Tensor
    blocks: list[tuple[torch.Tensor, quant.Grid]]
    values: torch.Tensor | None = None


def _rtn_side(mat, blocks, group_size) -> FactorCodes:
    """Round-to-nearest codes of ``mat``'s row blocks, on group-wise min-max grids."""
    gain = mat.abs().max().clamp_min(1e-30)
    out = []
    for rows, bits in _row_ranges(blocks):
        block_codes, scales, lows = [], [], []
        # 8 rows at a time end on a byte, so the packed slabs join into the block's
        # stream; int64 codes of a whole 150k-wide block would be GBs
        for sl in slabs(rows.stop, mat.shape[1], 1 << 21, start=rows.start, multiple=8):
            x = mat[sl] / gain
            grid = quant.make_grid(x, bits, group_size)
            block_codes.append(pack_bits(quant.quantize(x, grid), bits))
            scales.append(grid.scale)
            lows.append(grid.low)
        out.append((torch.cat(block_codes),
                    quant.Grid(torch.cat(scales), torch.cat(lows), bits, group_size)))
    return FactorCodes(gain.float(), out)


def _gptq_side(result: quant.GptqCodes, gain, blocks, group_size) -> FactorCodes:
    """GPTQ's codes and grids as they are, block by block: no re-quantization."""
    out = [(pack_bits(result.codes[rows], bits),
            quant.Grid(result.scale[rows], result.low[rows], bits, group_size))
           for rows, bits in _row_ranges(blocks)]
    return FactorCodes(gain.float(), out, result.values * gain.float())


# GPTQ's dampening, as a share of the mean input energy added to H's diagonal: 0.1 rather
# than the paper's 0.01, because a skill calibrates on a few dozen rows (about a thousand
# tokens) and the pack must serve inputs beyond them; on the zoo's `reverse` 0.1 scored
# 0.270 and 0.01 0.265 of 200 prompts (docs/skillpack.md, "GPTQ codes in packs").
GPTQ_DAMP = 0.1


def gptq_factors(a, b, h, blocks, group_size) -> tuple[FactorCodes, FactorCodes]:
    """The factors' codes with GPTQ where it pays: V (= ``b``, rows are directions) with GPTQ
    over its input columns on the input second moment ``h``, so that the layer's outputs on
    those inputs move least; U (= ``a``, k x m) round-to-nearest, as without calibration.
    V's codes and grids are GPTQ's own, stored without re-quantization; its ``values`` are
    the decoded V, bit for bit what ``decode`` gives.

    U is not refitted by least squares on the quantized V (``U = delta H V^T (V H V^T)^-1``,
    fitted to a thousand calibration tokens it lost exact match on the zoo's test prompts),
    nor quantized with GPTQ on ``V H V^T`` (a little worse than round-to-nearest there);
    docs/skillpack.md, "GPTQ codes in packs"."""
    widths = torch.tensor([bits for rows, bits in _row_ranges(blocks)
                           for _ in range(rows.stop - rows.start)])
    gain_b = b.abs().max().clamp_min(1e-30)
    qb = quant.gptq(b / gain_b, h, widths, group_size, damp=GPTQ_DAMP)
    return _rtn_side(a, blocks, group_size), _gptq_side(qb, gain_b, blocks, group_size)


@dataclass(frozen=True)
class BitDelta:
    """BitDelta baseline: one sign bit per entry plus one scale (mean |delta|) per matrix."""

    name: str = field(default="bitdelta", init=False)

    def encode(self, name: str, delta: torch.Tensor, hessian=None) -> Encoded:
        d = delta.float().reshape(-1)
        return Encoded({"signs": pack_bits((d >= 0).to(torch.int64), 1),
                        "scale": d.abs().mean().reshape(1)})

    def decode(self, name, shape, info, t) -> Part:
        count = int(torch.tensor(shape).prod().item()) if shape else 1
        signs = unpack_bits(t["signs"], 1, count, torch.uint8).float() * 2 - 1
        return DensePart(name, (signs * t["scale"].float()).reshape(shape))


@dataclass(frozen=True)
class DARE:
    """DARE baseline: drop each entry with probability ``drop``, rescale the rest by
    1 / (1 - drop), store the survivors sparse (bit-packed flat indices, fp16 values)."""

    name: str = field(default="dare", init=False)
    drop: float = 0.9
    seed: int = 0

    def __post_init__(self):
        if not 0 <= self.drop < 1:
            raise ConfigError(f"DARE drop must be in [0, 1), got {self.drop}.")

    def encode(self, name: str, delta: torch.Tensor, hessian=None) -> Encoded:
        d = delta.float().reshape(-1)
        gen = torch.Generator().manual_seed(self.seed ^ zlib.crc32(name.encode()))
        idx = torch.nonzero(torch.rand(d.numel(), generator=gen) >= self.drop).reshape(-1)
        return _sparse(idx, d[idx] / (1 - self.drop), d.numel())

    def decode(self, name, shape, info, t) -> Part:
        return _sparse_part(name, shape, info, t)


@dataclass(frozen=True)
class MagnitudePrune:
    """Keep the top ``keep`` fraction of entries by magnitude (``entries``), or every row
    that changed by more than ``row_tol`` of the largest row change (``rows``: embeddings
    move only for tokens seen in training). ``auto`` spends the bytes of ``entries`` on
    whichever layout loses less: whole top rows or single top entries."""

    name: str = field(default="magnitude", init=False)
    keep: float = 0.01
    layout: str = "auto"
    row_tol: float = 1e-3

    def __post_init__(self):
        if not 0 < self.keep <= 1 or self.layout not in ("auto", "entries", "rows"):
            raise ConfigError(f"magnitude needs 0 < keep <= 1 and layout auto|entries|rows, "
                              f"got keep={self.keep}, layout={self.layout!r}.")

    def encode(self, name: str, delta: torch.Tensor, hessian=None) -> Encoded:
        d = delta.float()
        n = d.numel()
        k = max(1, round(self.keep * n))
        entries_bytes = k * 2 + (k * _index_width(n) + 7) // 8
        layout = self.layout if d.dim() == 2 else "entries"
        if layout != "entries":
            norms = d.norm(dim=1)
            rows = torch.nonzero(norms > self.row_tol * norms.max()).reshape(-1)
            if layout == "auto":  # at equal bytes, keep whichever layout loses less
                fit = int(entries_bytes // (2 * d.shape[1] + _index_width(d.shape[0]) / 8))
                top = torch.topk(norms, min(fit, rows.numel())).indices.sort().values
                flat = d.reshape(-1).abs()
                lost_rows = float((norms.pow(2).index_fill(0, top, 0.0)).sum())
                dropped = flat.index_fill(0, torch.topk(flat, k).indices, 0.0)
                lost_entries = float(dropped.pow(2).sum())
                rows = top if lost_rows <= lost_entries else None
            if rows is not None and rows.numel():
                return Encoded({"rows": pack_bits(rows, _index_width(d.shape[0])),
                                "values": d[rows].half().contiguous()},
                               {"layout": "rows", "count": rows.numel()})
        idx = torch.topk(d.reshape(-1).abs(), k).indices.sort().values
        return _sparse(idx, d.reshape(-1)[idx], n)

    def decode(self, name, shape, info, t) -> Part:
        if info.get("layout") != "rows":
            return _sparse_part(name, shape, info, t)
        rows = unpack_bits(t["rows"], _index_width(shape[0]), info["count"])
        idx = (rows[:, None] * shape[1] + torch.arange(shape[1])).reshape(-1)
        return SparsePart(name, idx, t["values"].float().reshape(-1), tuple(shape))


def _sparse(idx: torch.Tensor, values: torch.Tensor, n: int) -> Encoded:
    return Encoded({"indices": pack_bits(idx, _index_width(n)), "values": values.half()},
                   {"layout": "entries", "count": idx.numel()})


def _sparse_part(name, shape, info, t) -> SparsePart:
    n = int(torch.tensor(shape).prod().item()) if shape else 1
    idx = unpack_bits(t["indices"], _index_width(n), info["count"])
    return SparsePart(name, idx, t["values"].float(), tuple(shape))


CODECS: Registry[Codec] = Registry("codec", [Dense(), LowRank(), MixedPrecisionLowRank(),
                                              BitDelta(), DARE(), MagnitudePrune()])


def get_codec(name: str, params: dict[str, Any] | None = None) -> Codec:
    """The registered codec ``name`` with ``params`` replacing its defaults."""
    codec = CODECS[name]
    try:
        return dataclasses.replace(codec, **(params or {}))
    except TypeError as exc:
        valid = [f.name for f in dataclasses.fields(codec) if f.init]
        raise ConfigError(f"Codec {name!r} got bad parameters {sorted(params or {})}: {exc}. "
                          f"Valid parameters: {', '.join(valid) or 'none'}.") from None


def codec_params(codec) -> dict[str, Any]:
    """The JSON-able constructor parameters of a codec instance (for the manifest)."""
    return {f.name: _jsonable(getattr(codec, f.name)) for f in dataclasses.fields(codec) if f.init}


def _jsonable(v):
    return [_jsonable(x) for x in v] if isinstance(v, tuple) else v
