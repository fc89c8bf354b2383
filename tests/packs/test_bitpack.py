"""Bit-packing: every width round-trips, and a b-bit value really takes b bits."""

import pytest
import torch

from skillstore.packs.bitpack import pack_bits, packed_nbytes, unpack_bits


@pytest.mark.parametrize("width", range(1, 9))
@pytest.mark.parametrize("count", [1, 7, 8, 1001])
def test_round_trip_every_width(width, count):
    values = torch.randint(0, 2**width, (count,), generator=torch.Generator().manual_seed(width))
    packed = pack_bits(values, width)
    assert packed.dtype == torch.uint8
    assert packed.numel() == (count * width + 7) // 8 == packed_nbytes(count, width)
    assert torch.equal(unpack_bits(packed, width, count), values)
    small = unpack_bits(packed, width, count, torch.uint8)
    assert small.dtype == torch.uint8 and torch.equal(small.long(), values)


@pytest.mark.parametrize("width", [9, 13, 20, 32])
def test_wide_indices_round_trip(width):
    values = torch.tensor([0, 1, 2**width - 1, 2 ** (width - 1) + 3])
    assert torch.equal(unpack_bits(pack_bits(values, width), width, 4), values)


def test_extremes_fill_bits():
    ones = torch.ones(16, dtype=torch.int64)
    assert pack_bits(ones, 1).tolist() == [255, 255]
    assert pack_bits(torch.full((4,), 3), 2).tolist() == [255]


def test_out_of_range_rejected():
    with pytest.raises(ValueError, match="do not fit in 2 bits"):
        pack_bits(torch.tensor([4]), 2)
    with pytest.raises(ValueError, match="cannot hold"):
        unpack_bits(torch.zeros(3, dtype=torch.uint8), 4, 9)
