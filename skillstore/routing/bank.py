"""Pack deltas kept as factors, added per sample by forward hooks: routing without merging."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn

from ..errors import FingerprintMismatchError, RoutingError
from ..packs.hooks import Ready, add_change, hook_input, nbytes, owners, ready_for, writable
from ..packs.parts import Part


@dataclass(frozen=True)
class PackDeltas:
    """One pack's decoded delta per base tensor name, with the scale it has in the state."""

    name: str
    parts: Mapping[str, Part]
    scale: float = 1.0


# The samples a pack applies to (None: the whole batch) and their weight (one float when
# they share it), or None when no sample uses the pack.
Route = tuple[torch.Tensor | None, torch.Tensor | float] | None


class DeltaBank:
    """The packs of a state, hooked into every module whose parameters they change.

    ``weights`` is a (batch, n_packs) tensor assigned before each forward pass (which samples
    each pack serves is worked out once per assignment: assign a new tensor rather than
    changing it in place); a zero column costs nothing, so top-1 routing pays for one pack
    per sample. The deltas are held ready
    for the hooks in the base's dtype (factors as factors, sparse parts as their rows or
    entries); ``packs`` keeps each pack's name and scale, not its decoded parts, so the
    float32 decode is freed once the bank is built.
    """

    def __init__(self, model: nn.Module, packs: Sequence[PackDeltas]):
        self.model = model
        self.packs = tuple(replace(p, parts={}) for p in packs)
        self._weights: torch.Tensor | None = None
        self._routes: dict[tuple, list[Route]] = {}
        self.enabled = True
        self._busy = False  # functional_call re-enters the hooked module
        self._handles: list = []
        # Tied parameters (embeddings and head) have several owners; each owner gets the delta.
        by_param = owners(model)
        self._entries: dict[nn.Module, list[tuple[int, str, Ready]]] = {}
        for index, pack in enumerate(packs):
            for tensor_name, part in pack.parts.items():
                try:
                    param = model.get_parameter(tensor_name)
                except AttributeError:
                    raise FingerprintMismatchError(
                        f"Pack {pack.name!r} changes {tensor_name!r}, which the model lacks; "
                        "load the base model the pack was made for."
                    ) from None
                if tuple(param.shape) != tuple(part.shape):
                    raise FingerprintMismatchError(
                        f"Pack {pack.name!r} has shape {tuple(part.shape)} for {tensor_name!r} "
                        f"but the model has {tuple(param.shape)}; load the pack's own base model."
                    )
                for module, attr, ready in ready_for(part, param, by_param[id(param)]):
                    self._entries.setdefault(module, []).append((index, attr, ready))

    @property
    def weights(self) -> torch.Tensor | None:
        return self._weights

    @weights.setter
    def weights(self, value: torch.Tensor | None) -> None:
        self._weights = value
        self._routes = {}

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.packs]

    @property
    def nbytes(self) -> int:
        """Bytes the hooks hold: every pack's deltas, ready to apply."""
        return nbytes(ready for entries in self._entries.values() for *_, ready in entries)

    @property
    def scales(self) -> torch.Tensor:
        return torch.tensor([p.scale for p in self.packs], dtype=torch.float32)

    def install(self) -> DeltaBank:
        if self._handles:
            return self
        for module in self._entries:
            self._handles.append(module.register_forward_hook(self._hook, with_kwargs=True))
        return self

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.weights = None

    def __enter__(self) -> DeltaBank:
        return self.install()

    def __exit__(self, *exc) -> None:
        self.remove()

    def _batch_weights(self, batch: int) -> torch.Tensor | None:
        w = self.weights
        if w is None or not self.enabled:
            return None
        if w.shape[0] != batch:
            if batch % w.shape[0]:
                raise RoutingError(
                    f"Routing weights cover {w.shape[0]} inputs but the batch has {batch}; "
                    "route each batch before running it."
                )
            w = w.repeat_interleave(batch // w.shape[0], dim=0)  # beams / return sequences
        return w

    def _routes_for(self, batch: int, device: torch.device) -> list[Route] | None:
        """Per pack, the samples it applies to and their weights, worked out once per batch
        (not once per hooked module): None for a pack no sample uses."""
        w = self._batch_weights(batch)
        if w is None:
            return None
        key = (batch, device)
        if key not in self._routes:
            w = w.to(device, torch.float32)
            routes: list[Route] = []
            for column in w.T:
                rows = column.nonzero().flatten()
                if rows.numel() == 0:
                    routes.append(None)
                    continue
                weights = column[rows]
                same = bool((weights == weights[0]).all())
                routes.append((None if rows.numel() == batch else rows,
                               float(weights[0]) if same else weights))
            self._routes[key] = routes
        return self._routes[key]

    def _hook(self, module: nn.Module, args: tuple, kwargs: dict,
              output: torch.Tensor) -> torch.Tensor | None:
        if self._busy or not isinstance(output, torch.Tensor):
            return None
        x = hook_input(module, args, kwargs)
        if x is None:
            raise RoutingError(f"Cannot route {type(module).__name__}: it was called without a "
                               "tensor input.")
        if (self.enabled and self.weights is not None and x.shape[0] == 1
                and self.weights.shape[0] > 1 and output.shape[:1] == (1,)):
            # An input shared by the whole batch (GPT-2's position ids are (1, L)): each sample
            # gets its own packs, so the shared row becomes one row per sample.
            rows = self.weights.shape[0]
            x, output = x.expand(rows, *x.shape[1:]), output.expand(rows, *output.shape[1:])
        routes = self._routes_for(x.shape[0], output.device)
        if routes is None:
            return None
        active = [(attr, part, routes[index]) for index, attr, part in self._entries[module]
                  if routes[index] is not None]
        if not active:
            return None
        out = writable(output, module, x)
        for attr, part, (rows, weight) in active:
            self._busy = True
            try:  # only the samples routed to this pack pay for it
                add_change(out, rows, module, attr, part,
                           x if rows is None else x.index_select(0, rows), weight)
            finally:
                self._busy = False
        return out
