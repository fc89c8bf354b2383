"""Materialise a model state in memory: packs grafted or routed onto a base; no checkpoint saved."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from torch import nn

from ..errors import RoutingError
from ..packs.format import PackFile, read_pack
from ..packs.graft import check_base, grafted_all
from ..routing import DeltaBank, PackDeltas, RoutedModel, load_router
from .view import StateView


def load_packs(view: StateView, blobs, cache_dir: str | Path | None = None) -> list[PackFile]:
    """Read and verify every pack of the state from the blob store, in state order."""
    return [read_pack(blobs.local_path(m.blob_digest, cache_dir)) for m in view.members]


def pack_deltas(view: StateView, packs: list[PackFile]) -> list[PackDeltas]:
    return [PackDeltas(m.name, {p.name: p for p in pack.decoded()}, m.scale)
            for m, pack in zip(view.members, packs, strict=True)]


@contextmanager
def materialise(model: nn.Module, view: StateView, blobs, *, tag: str | None = None,
                pad_token_id: int | None = None, cache_dir: str | Path | None = None,
                packs: list[PackFile] | None = None) -> Iterator[nn.Module]:
    """Yield ``model`` behaving as the state, then restore the base.

    Router ``none`` grafts the summed packs into the weights (fastest); ``tag`` and ``learned``
    keep packs as factors behind forward hooks so each input gets its own packs.
    """
    packs = load_packs(view, blobs, cache_dir) if packs is None else packs
    for pack in packs:
        check_base(model, pack)  # every pack is checked before any weight or hook changes
    if view.router == "none":
        with grafted_all(model, packs, [m.scale for m in view.members]):
            yield model
        return
    classifier = None
    if view.router == "learned":
        if not view.router_blob_digest:
            raise RoutingError(f"State {view.id} uses the learned router but has no router file; "
                               "train one with `skillstore state route`.")
        classifier = load_router(blobs.local_path(view.router_blob_digest, cache_dir))
        if classifier.base_fingerprint and classifier.base_fingerprint != view.base_fingerprint:
            raise RoutingError(f"The router of state {view.id} was trained on another base; "
                               "retrain it.")
    bank = DeltaBank(model, pack_deltas(view, packs))
    # the bank holds every delta it applies, in the base's dtype: the files' payloads (loaded
    # here, not the caller's) need not stay resident while the state serves
    packs = pack = None
    with RoutedModel(model, bank, view.router, classifier=classifier, tag=tag,
                     pad_token_id=pad_token_id):
        yield model
