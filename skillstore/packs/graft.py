"""Grafting: add packs to a loaded base model in place, with scales; unapply restores it exactly."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import FingerprintMismatchError, ModelMismatchError
from ..fingerprint import fingerprint_module
from ..models import FINGERPRINT_ATTR
from .format import PackFile, read_pack

STATE_ATTR = "_skillstore_grafts"


@dataclass
class GraftState:
    """Per model: the base values of every tensor a pack touched, and the active grafts.

    Keeping the originals makes unapply exact (floating-point add then subtract is not);
    with packs still active the tensor is recomputed from the base in application order.
    """

    originals: dict[str, torch.Tensor] = field(default_factory=dict)
    active: list[tuple[PackFile, float]] = field(default_factory=list)


def _as_pack(pack: PackFile | str | Path) -> PackFile:
    return pack if isinstance(pack, PackFile) else read_pack(pack)


def model_fingerprint(model: torch.nn.Module) -> str:
    """The base fingerprint of a model: the attribute load_causal_lm set, else computed once
    (before any graft, since grafting changes the weights)."""
    fp = getattr(model, FINGERPRINT_ATTR, None)
    if fp is None:
        if getattr(model, STATE_ATTR, None) and getattr(model, STATE_ATTR).active:
            raise FingerprintMismatchError("The model has grafts but no base fingerprint; "
                                           "load it with skillstore.models.load_causal_lm.")
        fp = fingerprint_module(model)
        setattr(model, FINGERPRINT_ATTR, fp)
    return fp


def _targets(model: torch.nn.Module, pack: PackFile) -> dict[str, torch.Tensor]:
    params = dict(model.named_parameters(remove_duplicate=False))
    params.update(dict(model.named_buffers(remove_duplicate=False)))
    out = {}
    for name in pack.names:
        if name not in params:
            raise ModelMismatchError(f"Pack {str(pack.path)!r} changes {name!r}, which the model "
                                     "does not have; apply it to the base it was made for.")
        shape = tuple(pack.manifest["tensors"][name]["shape"])
        if tuple(params[name].shape) != shape:
            raise ModelMismatchError(f"Pack {str(pack.path)!r} has shape {list(shape)} for "
                                     f"{name!r}, the model {list(params[name].shape)}.")
        out[name] = params[name]
    return out


def check_base(model: torch.nn.Module, pack: PackFile) -> dict[str, torch.Tensor]:
    """Refuse a pack made for another base; returns the model tensors it will change."""
    fp = model_fingerprint(model)
    if fp != pack.base_fingerprint:
        raise FingerprintMismatchError(
            f"Pack {str(pack.path)!r} was made for base {pack.base_fingerprint[:19]}..., "
            f"but the model is {fp[:19]}...; apply it to its own base model.")
    return _targets(model, pack)


@torch.no_grad()
def apply_pack(model: torch.nn.Module, pack: PackFile | str | Path, scale: float = 1.0, *,
               exact: bool = True) -> PackFile:
    """Add ``scale`` times the pack's delta to the model's weights, in place.

    Every check (digest, base fingerprint, names, shapes) runs before any weight changes.
    ``exact=False`` skips the copy of the touched base tensors (faster, less memory); unapply
    then subtracts the delta, which restores the base only up to float rounding.
    """
    pack = _as_pack(pack)
    targets = check_base(model, pack)
    state: GraftState = getattr(model, STATE_ATTR, None) or GraftState()
    setattr(model, STATE_ATTR, state)
    for part in pack.decoded():
        weight = targets[part.name]
        if exact and part.name not in state.originals:
            state.originals[part.name] = weight.detach().clone()
        part.add_to(weight, scale)
    state.active.append((pack, float(scale)))
    return pack


@torch.no_grad()
def unapply_pack(model: torch.nn.Module, pack: PackFile | str | Path, scale: float = 1.0) -> None:
    """Remove a pack applied with ``scale``. Tensors no other active pack touches get their
    base values back bit for bit; the others are recomputed from the base."""
    pack = _as_pack(pack)
    state: GraftState | None = getattr(model, STATE_ATTR, None)
    match = [i for i, (p, s) in enumerate(state.active if state else [])
             if p.digest == pack.digest and s == float(scale)]
    if not match:
        raise ModelMismatchError(f"Pack {str(pack.path)!r} at scale {scale} is not applied to "
                                 "this model; nothing to unapply.")
    state.active.pop(match[-1])
    targets = _targets(model, pack)
    still = {name: [(p, s) for p, s in state.active if name in p.manifest["tensors"]]
             for name in pack.names}
    for name, weight in targets.items():
        if name not in state.originals:  # applied with exact=False
            pack.decode(name).add_to(weight, -float(scale))
            continue
        weight.copy_(state.originals[name])
        for other, s in still[name]:
            other.decode(name).add_to(weight, s)
        if not still[name]:
            del state.originals[name]


def active_packs(model: torch.nn.Module) -> list[tuple[PackFile, float]]:
    """The packs applied to the model, in order, with their scales."""
    state = getattr(model, STATE_ATTR, None)
    return list(state.active) if state else []


class grafted:
    """Context manager: ``with grafted(model, pack, 0.5): ...`` applies, then unapplies."""

    def __init__(self, model: torch.nn.Module, pack: PackFile | str | Path, scale: float = 1.0):
        self.model, self.pack, self.scale = model, _as_pack(pack), scale

    def __enter__(self) -> torch.nn.Module:
        apply_pack(self.model, self.pack, self.scale)
        return self.model

    def __exit__(self, *exc) -> None:
        unapply_pack(self.model, self.pack, self.scale)
