"""Slabs: the row ranges a large matrix is processed in, so scratch stays a few MB per step."""

from __future__ import annotations

from collections.abc import Iterator


def slabs(stop: int, width: int, budget: int, *, start: int = 0,
          multiple: int = 1) -> Iterator[slice]:
    """Slices of rows ``start``..``stop`` of a matrix ``width`` wide, each of about ``budget``
    entries: ``budget // width`` rows, rounded down to a multiple of ``multiple`` rows, and at
    least ``multiple``; the last slice ends at ``stop``."""
    step = multiple * max(1, budget // (multiple * max(1, width)))
    for r0 in range(start, stop, step):
        yield slice(r0, min(r0 + step, stop))
