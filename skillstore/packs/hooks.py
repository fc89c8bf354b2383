"""Unmerged grafts: a pack's delta added to module outputs by forward hooks, weights untouched."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ModelMismatchError
from .parts import DensePart, LowRankPart, Part


def _is_conv1d(module: nn.Module) -> bool:
    # GPT-2's Conv1D computes x @ W + b with W stored (in, out); matched by name so that
    # this module does not import transformers.
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def contribution(module: nn.Module, attr: str, part: Part, x: torch.Tensor) -> torch.Tensor:
    """The module's output change when parameter ``attr`` moves by ``part`` (outputs are
    linear in each parameter), in float32; low-rank parts never form the dense delta."""
    if isinstance(module, nn.Linear) and attr == "weight":
        if isinstance(part, LowRankPart):
            return (x.to(part.V.dtype) @ part.V.T) @ part.U.T
        return F.linear(x.to(torch.float32), part.to_dense())
    if _is_conv1d(module) and attr == "weight" and isinstance(part, LowRankPart):
        return (x.to(part.U.dtype) @ part.U) @ part.V
    if (isinstance(module, nn.Linear) or _is_conv1d(module)) and attr == "bias":
        return part.to_dense().expand(*x.shape[:-1], -1)
    if isinstance(module, nn.Embedding) and attr == "weight":
        if isinstance(part, LowRankPart):
            return F.embedding(x, part.U) @ part.V
        return F.embedding(x, part.to_dense())
    # Norms and other modules: evaluate the module with the delta as its only parameter.
    params = {n: torch.zeros_like(p) for n, p in module.named_parameters(recurse=False)}
    params[attr] = part.to_dense().to(params[attr].dtype)
    return torch.func.functional_call(module, params, (x,)).float()


def prepare(part: Part, device: torch.device) -> Part:
    """Factors stay factors (float32, on ``device``); any other part becomes dense once."""
    if isinstance(part, LowRankPart):
        return LowRankPart(part.name, part.U.to(device, torch.float32),
                           part.V.to(device, torch.float32))
    return DensePart(part.name, part.to_dense().to(device, torch.float32))


def owners(model: nn.Module) -> dict[int, list[tuple[nn.Module, str]]]:
    """(module, attribute) per parameter id: a tied embedding and head have two owners."""
    out: dict[int, list[tuple[nn.Module, str]]] = {}
    for module in model.modules():
        for attr, param in module.named_parameters(recurse=False):
            out.setdefault(id(param), []).append((module, attr))
    return out


class PackHooks:
    """One applied pack as forward hooks: each hooked module's output gets ``scale`` times
    the output change its parameters' deltas cause. ``remove`` leaves the model exactly as
    before, since no weight is ever written."""

    def __init__(self, model: nn.Module, targets: dict[str, torch.Tensor],
                 parts: Iterable[Part], scale: float):
        self.scale = float(scale)
        self._busy = False  # functional_call re-enters the hooked module
        by_param = owners(model)
        self._entries: dict[nn.Module, list[tuple[str, Part]]] = {}
        for part in parts:
            weight = targets[part.name]
            if id(weight) not in by_param:
                raise ModelMismatchError(f"{part.name!r} is a buffer, not a module parameter; "
                                         "apply this pack with mode='merge'.")
            prepared = prepare(part, weight.device)
            for module, attr in by_param[id(weight)]:
                self._entries.setdefault(module, []).append((attr, prepared))
        self._handles = [m.register_forward_hook(self._hook, with_kwargs=True)
                         for m in self._entries]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, module: nn.Module, args: tuple, kwargs: dict, output):
        if self._busy:
            return None
        if not isinstance(output, torch.Tensor):
            raise ModelMismatchError(f"{type(module).__name__} returns "
                                     f"{type(output).__name__}, not a tensor, so a hooked pack "
                                     "cannot add to it; use mode='merge'.")
        x = args[0] if args else next((v for v in kwargs.values()
                                       if isinstance(v, torch.Tensor)), None)
        if x is None:
            raise ModelMismatchError(f"{type(module).__name__} was called without a tensor "
                                     "input, so a hooked pack cannot act on it; use mode='merge'.")
        out = output
        for attr, part in self._entries[module]:
            self._busy = True
            try:
                change = contribution(module, attr, part, x)
            finally:
                self._busy = False
            out = out + (self.scale * change).to(out.dtype)
        return out
