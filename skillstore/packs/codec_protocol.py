"""The codec contract: what a delta codec takes, what it returns, and how it is stored."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch

from .parts import Part


@dataclass(frozen=True)
class Encoded:
    """A codec's output for one tensor: payload tensors (local keys) and JSON-able facts."""

    tensors: dict[str, torch.Tensor]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())


@runtime_checkable
class Codec(Protocol):
    """One way to store a delta tensor, as a frozen dataclass whose init fields are its parameters.

    The manifest records ``name`` and the init fields (``codec_params``), and readers rebuild
    the codec with ``get_codec(name, params)``, so the parameters must be JSON-able and the
    instance equal to its rebuilt self. ``encode`` must be deterministic (packs are stored
    content-addressed), return contiguous payload tensors (safetensors stores them) and JSON-able
    ``info``; a codec that needs 2-D input refuses other shapes with a ConfigError. ``decode``
    gets back exactly the payload and info that ``encode`` produced. A codec may also offer
    ``decode_many(names, shape, info, payloads)``: ``decode`` of same-shaped tensors as a batch,
    the same values; the pack reader uses it when present.
    """

    @property
    def name(self) -> str: ...

    def encode(self, name: str, delta: torch.Tensor,
               hessian: torch.Tensor | None = None) -> Encoded: ...

    def decode(self, name: str, shape: tuple[int, ...], info: Mapping[str, Any],
               t: Mapping[str, torch.Tensor]) -> Part: ...
