"""True bit-packing of small unsigned integers into uint8 tensors (a 2-bit value takes 2 bits)."""

from __future__ import annotations

import torch

MAX_WIDTH = 32


def packed_nbytes(count: int, width: int) -> int:
    """Bytes that ``count`` values of ``width`` bits occupy once packed."""
    return (count * width + 7) // 8


def pack_bits(values: torch.Tensor, width: int) -> torch.Tensor:
    """Pack non-negative integers below 2**width, little-endian bit order, into uint8."""
    if not 1 <= width <= MAX_WIDTH:
        raise ValueError(f"bit width {width} is outside 1..{MAX_WIDTH}")
    flat = values.reshape(-1).to(torch.int64)
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= (1 << width)):
        raise ValueError(f"values do not fit in {width} bits (they span {int(flat.min())}.."
                         f"{int(flat.max())}; a NaN cast to an integer is a large negative)")
    if width == 8:
        return flat.to(torch.uint8)
    shifts = torch.arange(width, dtype=torch.int64)
    bits = ((flat.unsqueeze(1) >> shifts) & 1).to(torch.uint8).reshape(-1)
    pad = (-bits.numel()) % 8
    if pad:
        bits = torch.cat([bits, bits.new_zeros(pad)])
    weights = (1 << torch.arange(8, dtype=torch.int32)).to(torch.int32)
    return (bits.reshape(-1, 8).to(torch.int32) * weights).sum(1).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, width: int, count: int,
                dtype: torch.dtype = torch.int64) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: the first ``count`` values (``dtype``; uint8 is enough
    for widths up to 8 and saves memory on large tensors)."""
    if not 1 <= width <= MAX_WIDTH:
        raise ValueError(f"bit width {width} is outside 1..{MAX_WIDTH}")
    if packed.numel() != packed_nbytes(count, width):
        raise ValueError(f"{packed.numel()} packed bytes cannot hold {count} values of {width} bits")
    flat = packed.reshape(-1)
    if width == 8:
        return flat.to(dtype)
    if 8 % width == 0:  # 1, 2, 4 bits: values never straddle a byte
        shifts = torch.arange(0, 8, width, dtype=torch.uint8)
        vals = (flat.unsqueeze(1) >> shifts) & ((1 << width) - 1)
        return vals.reshape(-1)[:count].to(dtype)
    if width < 8:  # 3, 5, 6, 7 bits: eight values fill exactly ``width`` bytes
        pad = (-flat.numel()) % width
        if pad:
            flat = torch.cat([flat, flat.new_zeros(pad)])
        groups = flat.reshape(-1, width).to(torch.int64)
        word = groups[:, 0].clone()
        for i in range(1, width):  # up to 56 bits: an int64 holds the eight values
            word |= groups[:, i] << (8 * i)
        shifts = torch.arange(0, 8 * width, width, dtype=torch.int64)
        vals = (word.unsqueeze(1) >> shifts) & ((1 << width) - 1)
        return vals.reshape(-1)[:count].to(dtype)
    bits = ((flat.unsqueeze(1) >> torch.arange(8, dtype=torch.uint8)) & 1).reshape(-1)
    bits = bits[: count * width].reshape(count, width)
    out = torch.zeros(count, dtype=torch.int64)
    for j in range(width):
        out |= bits[:, j].to(torch.int64) << j
    return out.to(dtype)
