"""Pack deltas kept as factors, added per sample by forward hooks: routing without merging."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import FingerprintMismatchError, RoutingError
from ..packs.hooks import contribution, owners, prepare
from ..packs.parts import Part


@dataclass(frozen=True)
class PackDeltas:
    """One pack's decoded delta per base tensor name, with the scale it has in the state."""

    name: str
    parts: Mapping[str, Part]
    scale: float = 1.0


class DeltaBank:
    """The packs of a state, hooked into every module whose parameters they change.

    ``weights`` is a (batch, n_packs) tensor set before each forward pass; a zero column
    costs nothing, so top-1 routing pays for one pack per sample.
    """

    def __init__(self, model: nn.Module, packs: Sequence[PackDeltas]):
        self.model = model
        self.packs = tuple(packs)
        self.weights: torch.Tensor | None = None
        self.enabled = True
        self._busy = False  # functional_call re-enters the hooked module
        self._handles: list = []
        device = next(model.parameters()).device
        # Tied parameters (embeddings and head) have several owners; each owner gets the delta.
        by_param = owners(model)
        self._entries: dict[nn.Module, list[tuple[int, str, Part]]] = {}
        for index, pack in enumerate(self.packs):
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
                for module, attr in by_param[id(param)]:
                    self._entries.setdefault(module, []).append(
                        (index, attr, prepare(part, device)))

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.packs]

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

    def _hook(self, module: nn.Module, args: tuple, kwargs: dict,
              output: torch.Tensor) -> torch.Tensor | None:
        if self._busy or not isinstance(output, torch.Tensor):
            return None
        x = args[0] if args else next(
            (v for v in kwargs.values() if isinstance(v, torch.Tensor)), None)
        if x is None:
            raise RoutingError(f"Cannot route {type(module).__name__}: it was called without a "
                               "tensor input.")
        if (self.enabled and self.weights is not None and x.shape[0] == 1
                and self.weights.shape[0] > 1 and output.shape[:1] == (1,)):
            # An input shared by the whole batch (GPT-2's position ids are (1, L)): each sample
            # gets its own packs, so the shared row becomes one row per sample.
            rows = self.weights.shape[0]
            x, output = x.expand(rows, *x.shape[1:]), output.expand(rows, *output.shape[1:])
        w = self._batch_weights(x.shape[0])
        if w is None:
            return None
        w = w.to(output.device)
        out = output.float()
        for index, attr, part in self._entries[module]:
            column = w[:, index]
            rows = column.nonzero().flatten()
            if rows.numel() == 0:
                continue
            self._busy = True
            try:
                change = contribution(module, attr, part, x[rows])
            finally:
                self._busy = False
            scale = column[rows].view(-1, *([1] * (change.dim() - 1)))
            out = out.index_add(0, rows, scale * change.to(out.dtype))
        return out.to(output.dtype)
