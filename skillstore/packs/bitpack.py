"""True bit-packing of small unsigned integers into uint8 tensors (a 2-bit value takes 2 bits).

Bit ``j`` of value ``k`` is bit ``(k * width + j) % 8`` (least significant first) of byte
``(k * width + j) // 8``: NumPy's ``packbits(..., bitorder="little")`` of the values' bits.
"""

from __future__ import annotations

import numpy as np
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
    nbytes = 1 if width < 8 else 2 if width <= 16 else 4
    raw = flat.numpy().astype(f"<u{nbytes}")
    if width > 1:  # each value's bits, least significant first; keep the low ``width``
        bits = np.unpackbits(raw.view(np.uint8), bitorder="little")
        raw = bits.reshape(-1, 8 * nbytes)[:, :width]
    return torch.from_numpy(np.packbits(raw, bitorder="little"))


def unpack_bits(packed: torch.Tensor, width: int, count: int,
                dtype: torch.dtype = torch.int64) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: the first ``count`` values (``dtype``; uint8 is enough
    for widths up to 8 and saves memory on large tensors)."""
    if not 1 <= width <= MAX_WIDTH:
        raise ValueError(f"bit width {width} is outside 1..{MAX_WIDTH}")
    if packed.numel() != packed_nbytes(count, width):
        raise ValueError(
            f"{packed.numel()} packed bytes cannot hold {count} values of {width} bits")
    flat = packed.reshape(-1)
    if width == 8:
        return flat.to(dtype)
    if width == 1:
        bits = np.unpackbits(flat.numpy(), count=count, bitorder="little")
        return torch.from_numpy(bits).to(dtype)
    if 8 % width == 0:  # 2, 4 bits: values never straddle a byte
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
    # Wider than a byte: regroup each value's bits into whole little-endian bytes.
    nbytes = 2 if width <= 16 else 4
    bits = np.zeros((count, 8 * nbytes), dtype=np.uint8)
    bits[:, :width] = np.unpackbits(flat.numpy(), count=count * width,
                                    bitorder="little").reshape(count, width)
    words = np.packbits(bits, bitorder="little").view(f"<u{nbytes}")
    return torch.from_numpy(words.astype(np.int64)).to(dtype)
