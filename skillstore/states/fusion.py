"""Fusion methods over packs (a registry): learned routing, task arithmetic and TIES-merging."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch

from ..errors import ConfigError, FingerprintMismatchError
from ..packs.codecs import codec_params, get_codec
from ..packs.format import SEP, PackFile, write_pack
from ..packs.roles import module_role
from ..registry import Registry


@runtime_checkable
class FusionMethod(Protocol):
    """A way to combine packs into one state.

    A method that ``merges`` turns the packs' deltas for one tensor (same shape, each with its
    scale) into one delta of that shape; ``merge`` must not depend on the order of the packs,
    must give zero when every scale is zero, and must keep the signs of identical deltas.
    A method that does not merge keeps the packs apart behind the learned router, and its
    ``merge`` raises ConfigError.
    """

    @property
    def name(self) -> str: ...

    @property
    def merges(self) -> bool: ...

    def merge(self, deltas: Sequence[torch.Tensor], scales: Sequence[float]) -> torch.Tensor: ...


@dataclass(frozen=True)
class LearnedRouting:
    """Keep every pack as it is and let the learned router pick per input: nothing is merged."""

    name: str = field(default="learned", init=False)
    merges: bool = field(default=False, init=False)

    def merge(self, deltas: Sequence[torch.Tensor], scales: Sequence[float]) -> torch.Tensor:
        raise ConfigError("Fusion method 'learned' routes packs; it does not merge tensors.")


@dataclass(frozen=True)
class TaskArithmetic:
    """merged = lam * sum_i s_i * delta_i (Ilharco et al. 2023)."""

    lam: float = 1.0
    name: str = field(default="task_arithmetic", init=False)
    merges: bool = field(default=True, init=False)

    def merge(self, deltas: Sequence[torch.Tensor], scales: Sequence[float]) -> torch.Tensor:
        return self.lam * sum(s * d.float() for d, s in zip(deltas, scales, strict=True))


@dataclass(frozen=True)
class Ties:
    """TIES-merging (Yadav et al. 2023): trim each delta to its top-``density`` magnitudes,
    elect a sign per entry from the summed trimmed deltas, average only the agreeing entries."""

    density: float = 0.2
    lam: float = 1.0
    name: str = field(default="ties", init=False)
    merges: bool = field(default=True, init=False)

    def __post_init__(self):
        if not 0.0 < self.density <= 1.0:
            raise ConfigError(f"TIES density {self.density} must be in (0, 1].")

    def trim(self, delta: torch.Tensor) -> torch.Tensor:
        flat = delta.float().reshape(-1)
        k = max(1, int(round(self.density * flat.numel())))
        if k >= flat.numel():
            return delta.float().clone()
        keep = flat.abs().topk(k).indices
        out = torch.zeros_like(flat)
        out[keep] = flat[keep]
        return out.reshape(delta.shape)

    def merge(self, deltas: Sequence[torch.Tensor], scales: Sequence[float]) -> torch.Tensor:
        trimmed = torch.stack([s * self.trim(d) for d, s in zip(deltas, scales, strict=True)])
        sign = torch.sign(trimmed.sum(0))
        agree = (torch.sign(trimmed) == sign) & (trimmed != 0)
        total = (trimmed * agree).sum(0)
        count = agree.sum(0).clamp_min(1)
        return self.lam * total / count


FUSION_METHODS: Registry[FusionMethod] = Registry("fusion method",
                                                  [LearnedRouting(), TaskArithmetic(), Ties()])


def get_fusion(name: str) -> FusionMethod:
    return FUSION_METHODS[name]


def merged_deltas(packs: Sequence[PackFile], scales: Sequence[float],
                  method: FusionMethod) -> dict[str, torch.Tensor]:
    """Merged dense delta per tensor over the union of the packs' tensors, one name at a time."""
    if not method.merges:
        raise ConfigError(f"Fusion method {method.name!r} does not merge; "
                          "build a routed state instead.")
    bases = {p.base_fingerprint for p in packs}
    if len(bases) != 1:
        raise FingerprintMismatchError("The packs to fuse target different base models; "
                                       "fuse packs of one base.")
    names = sorted({n for p in packs for n in p.names})
    out = {}
    for name in names:
        shape = next(tuple(p.manifest["tensors"][name]["shape"]) for p in packs if name in p.names)
        deltas = [p.decode(name).to_dense().reshape(shape) if name in p.names
                  else torch.zeros(shape)
                  for p in packs]
        out[name] = method.merge(deltas, scales)
    return out


def write_fused_pack(path: str | Path, packs: Sequence[PackFile], deltas: dict[str, torch.Tensor],
                     method_name: str) -> int:
    """Store merged deltas as a SkillPack (dense fp16 per tensor); returns its size in bytes."""
    codec = get_codec("dense")
    entries, tensors = {}, {}
    dtypes = {n: p.manifest["tensors"][n]["dtype"] for p in packs for n in p.names}
    for name, delta in sorted(deltas.items()):
        enc = codec.encode(name, delta)
        entries[name] = {"codec": codec.name, "params": codec_params(codec), "info": enc.info,
                         "shape": list(delta.shape), "dtype": dtypes[name],
                         "role": module_role(name, delta.shape), "payload": sorted(enc.tensors),
                         "nbytes": enc.nbytes}
        for key, t in enc.tensors.items():
            tensors[f"{name}{SEP}{key}"] = t
    manifest = {"base_fingerprint": packs[0].base_fingerprint, "tensors": entries,
                "created_from": {"fused_from": [p.digest for p in packs], "method": method_name}}
    return write_pack(path, manifest, tensors)
