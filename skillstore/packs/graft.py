"""Grafting: add packs to a loaded base model in place, with scales; unapply restores it exactly."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch

from ..errors import FingerprintMismatchError, ModelMismatchError, unknown_name
from ..fingerprint import fingerprint_module
from ..models import FINGERPRINT_ATTR
from .format import PackFile, read_pack
from .hooks import PackHooks
from .parts import DensePart, LowRankPart, Part, SparsePart

STATE_ATTR = "_skillstore_grafts"
MODES = ("merge", "hooks")


# An fp16 weight gets a low-rank delta in float32 slabs of about this many bytes: one
# rounding per entry, as in the out-of-place sum, with no weight-sized temporary.
SLAB_BYTES = 4 << 20


class Graft(NamedTuple):
    """One applied pack: merged into the weights (``hooks`` is None) or held by hooks.
    ``removable`` is False for a pack merged for good (nothing kept to take it off)."""

    pack: PackFile
    scale: float
    hooks: PackHooks | None = None
    removable: bool = True


@dataclass
class Snapshot:
    """The base value of one grafted tensor, kept without copying the tensor.

    ``full`` is the base storage itself: the first dense or low-rank graft writes its sum
    into a new tensor (one pass, as fast as adding in place) and keeps the old one. A sparse
    graft changes a few entries in place and keeps only their base values in ``entries``.
    """

    full: torch.Tensor | None = None
    entries: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)

    def restore(self, weight: torch.Tensor) -> None:
        if self.full is not None:
            weight.data = self.full
            return
        flat = weight.data.view(-1)
        for idx, values in reversed(self.entries):  # the oldest record holds the base value
            flat[idx] = values


@dataclass
class GraftState:
    """Per model: a snapshot of the base value of every tensor a pack touched, and the
    active grafts.

    Keeping the originals makes unapply exact (floating-point add then subtract is not);
    with packs still active the tensor is recomputed from the base in application order.
    """

    originals: dict[str, Snapshot] = field(default_factory=dict)
    active: list[Graft] = field(default_factory=list)
    # Storage that unapply released, reused by the next graft of a tensor of that shape:
    # fresh memory costs a page fault per 4 KB, which was most of an apply's time.
    spare: dict[tuple, list[torch.Tensor]] = field(default_factory=dict)

    def take_spare(self, like: torch.Tensor) -> torch.Tensor | None:
        pool = self.spare.get(_spare_key(like))
        return pool.pop() if pool else None

    def give_spare(self, t: torch.Tensor) -> None:
        self.spare.setdefault(_spare_key(t), []).append(t)


def _spare_key(t: torch.Tensor) -> tuple:
    return tuple(t.shape), t.dtype, t.device


def _as_pack(pack: PackFile | str | Path) -> PackFile:
    return pack if isinstance(pack, PackFile) else read_pack(pack)


def model_fingerprint(model: torch.nn.Module) -> str:
    """The base fingerprint of a model: the attribute load_causal_lm set, else computed once
    (before any graft, since grafting changes the weights)."""
    fp = getattr(model, FINGERPRINT_ATTR, None)
    if fp is None:
        state = getattr(model, STATE_ATTR, None)
        if state and any(g.hooks is None for g in state.active):
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
               exact: bool = True, removable: bool = True, mode: str = "merge") -> PackFile:
    """Add ``scale`` times the pack's delta to the model's weights, in place.

    Every check (digest, base fingerprint, names, shapes) runs before any weight changes.
    With ``exact`` (the default) the base value of each touched tensor is kept for unapply
    without a copy: a dense or low-rank delta is added out of place (the new sum becomes the
    weight's data and the old storage is the snapshot), a sparse one in place with the base
    values of its entries saved. ``exact=False`` adds everything in place and keeps nothing
    (less memory); unapply then subtracts the delta, which restores the base only up to
    float rounding.

    ``removable=False`` merges the pack for good, the fast path for a model that is saved or
    served as it is (``export_merged``, ``skillstore pack apply``): each part is decoded and
    added into the loaded weight in place as the pack is read (see ``add_in_place``), so no
    weight is copied and no new storage is taken; ``exact`` is not used and ``unapply_pack``
    refuses the pack. Packs that are still removable must come off the same tensors first.

    ``mode="hooks"`` leaves every weight as it is and adds the delta to the outputs of the
    modules that own the changed tensors, through forward hooks (low-rank parts as
    ``(x V^T) U^T``, LoRA-style; other parts as dense float32 tensors kept beside the
    model). Applying costs little more than reading the pack; each forward pass pays for the
    extra products. Unapply removes the hooks, so it is exact by construction (``exact`` and
    ``removable`` are not used). Hooked and merged packs stack.
    """
    if mode not in MODES:
        raise unknown_name("apply mode", mode, MODES)
    pack = _as_pack(pack)
    targets = check_base(model, pack)
    state: GraftState = getattr(model, STATE_ATTR, None) or GraftState()
    if mode == "merge" and not removable:
        held = sorted(n for n in targets if n in state.originals)
        if held:
            raise ModelMismatchError(
                f"Pack {str(pack.path)!r} cannot be merged for good: {held[0]!r} carries "
                f"removable packs ({len(held)} tensor(s)); unapply them first, or apply this "
                "pack with removable=True.")
    setattr(model, STATE_ATTR, state)
    if mode == "hooks":
        hooks = PackHooks(model, targets, pack.decoded(), scale)
        state.active.append(Graft(pack, float(scale), hooks))
        return pack
    for part in pack.decoded():  # one part decoded, added and dropped at a time
        if removable:
            _graft(state, targets[part.name], part, scale, exact)
        else:
            add_in_place(targets[part.name], part, scale)
    state.active.append(Graft(pack, float(scale), removable=removable))
    return pack


def add_in_place(weight: torch.Tensor, part: Part, scale: float = 1.0) -> None:
    """weight += scale * delta in the weight's own storage, with no weight-sized temporary.

    A float32 weight takes ``addmm_`` (low-rank) or ``add_`` (dense) directly, as does a
    bf16 one, its factors rounded to bf16: the product still sums in float32 and the sum is
    rounded once, so it differs from the float32 sum only by the factors' rounding (about
    0.4% of the delta, far below a pack's own error), and it runs 3x faster than float32
    slabs on a CPU with bf16 instructions. An fp16 weight takes a low-rank product in
    float32 slabs of rows (read, add the slab's product, round once, write back); other
    dense deltas one ``add_`` that computes in float32; a sparse part writes its entries."""
    w = weight.data
    low_rank = isinstance(part, LowRankPart) and w.dim() == 2 and w.is_contiguous()
    if isinstance(part, SparsePart) or w.dtype == torch.float32:
        part.add_to(weight, scale)
    elif isinstance(part, DensePart):
        w.add_(part.tensor.to(w.device).reshape(w.shape), alpha=scale)
    elif low_rank and w.dtype == torch.bfloat16:
        # row-major factors: a decoded U is column-major, on which addmm_ runs at half speed
        w.addmm_(part.U.to(w.device, w.dtype, memory_format=torch.contiguous_format),
                 part.V.to(w.device, w.dtype, memory_format=torch.contiguous_format),
                 alpha=scale)
    elif low_rank:
        u = part.U.to(w.device, torch.float32, memory_format=torch.contiguous_format)
        v = part.V.to(w.device, torch.float32)
        rows = max(1, min(w.shape[0], SLAB_BYTES // (4 * max(1, w.shape[1]))))
        buf = torch.empty(rows, w.shape[1], dtype=torch.float32, device=w.device)
        for i in range(0, w.shape[0], rows):
            j = min(w.shape[0], i + rows)
            slab = buf[:j - i]
            slab.copy_(w[i:j])
            slab.addmm_(u[i:j], v, alpha=scale)
            w[i:j].copy_(slab)
    else:
        part.add_to(weight, scale)


def _graft(state: GraftState, weight: torch.Tensor, part: Part, scale: float, exact: bool) -> None:
    """Add one part, first recording what unapply needs to restore the base bit for bit."""
    snap = state.originals.get(part.name)  # once a tensor has one, every graft records
    sparse = isinstance(part, SparsePart)
    if exact and snap is None:
        snap = state.originals[part.name] = Snapshot()
        if not sparse:  # out of place: the old storage is the snapshot, no copy is made
            snap.full = weight.data
            weight.data = part.added(weight, scale, out=state.take_spare(weight.data))
            return
    if snap is not None and snap.full is None:
        if sparse:
            idx = part.indices.to(weight.device)
            snap.entries.append((idx, weight.data.view(-1)[idx].clone()))
        else:  # a dense graft over sparse ones: rebuild the base once
            base = weight.data.clone()
            snap.restore(base)
            snap.full, snap.entries = base, []
    add_in_place(weight, part, scale)


@torch.no_grad()
def unapply_pack(model: torch.nn.Module, pack: PackFile | str | Path, scale: float = 1.0, *,
                 keep_buffers: bool = True) -> None:
    """Remove a pack applied with ``scale``. Tensors no other active pack touches get their
    base values back bit for bit; the others are recomputed from the base.

    The grafted tensors' storage is kept for the next apply (``keep_buffers``; the memory
    an applied pack used stays in use); ``release_buffers(model)`` frees it."""
    pack = _as_pack(pack)
    state: GraftState | None = getattr(model, STATE_ATTR, None)
    match = [i for i, g in enumerate(state.active if state else [])
             if g.pack.digest == pack.digest and g.scale == float(scale)]
    if not match:
        raise ModelMismatchError(f"Pack {str(pack.path)!r} at scale {scale} is not applied to "
                                 "this model; nothing to unapply.")
    if not state.active[match[-1]].removable:
        raise ModelMismatchError(
            f"Pack {str(pack.path)!r} was merged for good (apply_pack(..., removable=False) "
            "keeps no copy of the base weights), so it cannot be unapplied; reload the base "
            "model, or apply the pack with removable=True (the default) to unapply it later.")
    gone = state.active.pop(match[-1])
    if gone.hooks is not None:  # the weights were never written
        gone.hooks.remove()
        return
    targets = _targets(model, pack)
    # packs merged for good are in the snapshots already (they must precede them)
    still = {name: [(g.pack, g.scale) for g in state.active
                    if g.hooks is None and g.removable and name in g.pack.manifest["tensors"]]
             for name in pack.names}
    for name, weight in targets.items():
        if name not in state.originals:  # applied with exact=False
            add_in_place(weight, pack.decode(name), -float(scale))
            continue
        snap = state.originals.pop(name)
        if snap.full is not None and keep_buffers:
            state.give_spare(weight.data)
        snap.restore(weight)
        for other, s in still[name]:
            _graft(state, weight, other.decode(name), s, exact=True)


def release_buffers(model: torch.nn.Module) -> int:
    """Free the storage unapply kept for reuse; returns how many bytes were released."""
    state: GraftState | None = getattr(model, STATE_ATTR, None)
    if state is None:
        return 0
    freed = sum(t.numel() * t.element_size() for pool in state.spare.values() for t in pool)
    state.spare.clear()
    return freed


def active_packs(model: torch.nn.Module) -> list[tuple[PackFile, float]]:
    """The packs applied to the model (merged or hooked), in order, with their scales."""
    state = getattr(model, STATE_ATTR, None)
    return [(g.pack, g.scale) for g in state.active] if state else []


class grafted:
    """Context manager: ``with grafted(model, pack, 0.5): ...`` applies, then unapplies."""

    def __init__(self, model: torch.nn.Module, pack: PackFile | str | Path, scale: float = 1.0,
                 *, mode: str = "merge"):
        self.model, self.pack, self.scale, self.mode = model, _as_pack(pack), scale, mode

    def __enter__(self) -> torch.nn.Module:
        apply_pack(self.model, self.pack, self.scale, mode=self.mode)
        return self.model

    def __exit__(self, *exc) -> None:
        unapply_pack(self.model, self.pack, self.scale)


@contextmanager
def grafted_all(model: torch.nn.Module, packs: list[PackFile], scales: list[float], *,
                exact: bool = True) -> Iterator[torch.nn.Module]:
    """Task arithmetic in place: every pack added at its scale, removed again after.

    With ``exact`` the touched tensors get their base values back bit for bit, which also
    throws away anything done to them inside the block. Training inside the block needs
    ``exact=False``: each pack's delta is subtracted again, so the weights end as the base plus
    what training changed (up to float rounding).
    """
    applied: list[tuple[PackFile, float]] = []
    try:
        for pack, scale in zip(packs, scales, strict=True):
            apply_pack(model, pack, scale, exact=exact)
            applied.append((pack, scale))
        yield model
    finally:
        for pack, scale in reversed(applied):
            unapply_pack(model, pack, scale)
