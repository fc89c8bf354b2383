"""The router registry (none, tag, learned) and routed inference over a DeltaBank."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from ..errors import RoutingError, unknown_name
from ..registry import Registry
from .bank import DeltaBank
from .learned import NONE_CLASS, RouterClassifier, input_features


@dataclass
class RouteInputs:
    """What a router sees for one batch: token ids, their mask, and its features, read lazily
    (hidden states from the plain base)."""

    bank: DeltaBank
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    tag: str | None = None
    classifier: RouterClassifier | None = None
    _features: torch.Tensor | None = field(default=None, repr=False)

    def features(self, key: tuple[str, int]) -> torch.Tensor:
        """The batch's router features ``key`` (a classifier's ``feature_key``)."""
        if self._features is None:
            bank = self.bank
            enabled, bank.enabled = bank.enabled, False  # the router reads the plain base
            try:
                self._features = input_features(bank.model, self.input_ids,
                                                self.attention_mask, features=key[0],
                                                layer=key[1])
            finally:
                bank.enabled = enabled
        return self._features


@runtime_checkable
class Router(Protocol):
    """Decides, per input, how much of each pack of a DeltaBank to add.

    ``select`` returns a float (batch, n_packs) tensor for ``inputs.input_ids``: row b, column i
    is the weight of ``bank.packs[i]`` for sample b, between 0 and that pack's scale (0: off).
    It is called once per sequence, on the first forward pass, and must not change the bank.
    """

    @property
    def name(self) -> str: ...

    def select(self, inputs: RouteInputs) -> torch.Tensor: ...


class SumAll:
    """Task arithmetic: every pack at its scale for every input. The interference baseline."""

    name = "none"

    def select(self, inputs: RouteInputs) -> torch.Tensor:
        return inputs.bank.scales.expand(inputs.input_ids.shape[0], -1).clone()


class Tagged:
    """Explicit routing: the request names its skill; no tag means the plain base."""

    name = "tag"

    def select(self, inputs: RouteInputs) -> torch.Tensor:
        bank = inputs.bank
        w = torch.zeros(inputs.input_ids.shape[0], len(bank.packs))
        if inputs.tag is None or inputs.tag == NONE_CLASS:
            return w
        if inputs.tag not in bank.names:
            raise unknown_name("skill tag", inputs.tag, bank.names)
        index = bank.names.index(inputs.tag)
        w[:, index] = bank.packs[index].scale
        return w


class Learned:
    """A classifier on the input's features (token n-grams, or the base's pooled hidden states)
    picks the pack (top-1) or mixes the top k;
    below its calibrated threshold it abstains, and the input gets no pack."""

    name = "learned"

    def select(self, inputs: RouteInputs) -> torch.Tensor:
        clf = inputs.classifier
        if clf is None:
            raise RoutingError("The learned router has no classifier; "
                               "train one with `skillstore state route`.")
        bank = inputs.bank
        unknown = [c for c in clf.classes if c != NONE_CLASS and c not in bank.names]
        if unknown:
            raise RoutingError(
                f"Router knows pack {unknown[0]!r} that the state lacks; "
                "retrain it for this state's packs."
            )
        per_class = clf.class_weights(inputs.features(clf.feature_key)).cpu()
        w = torch.zeros(per_class.shape[0], len(bank.packs))
        for c, name in enumerate(clf.classes):
            if name != NONE_CLASS:
                index = bank.names.index(name)
                w[:, index] = per_class[:, c] * bank.packs[index].scale
        return w


ROUTERS: Registry[Router] = Registry("router", [SumAll(), Tagged(), Learned()])


def get_router(name: str) -> Router:
    return ROUTERS[name]


def _continuing(kwargs: dict) -> bool:
    """True on the cached decoding steps of a generation (the KV cache already holds tokens).

    transformers names the cache ``past_key_values`` (4.x) or ``cache`` (5.x).
    """
    for key in ("cache", "past_key_values"):
        past = kwargs.get(key)
        if past is not None and hasattr(past, "get_seq_length") and past.get_seq_length() > 0:
            return True
    return False


@dataclass(frozen=True)
class RouteTrace:
    """One routing decision: an input's real (unmasked) tokens and every pack it got, by name,
    with its weight."""

    tokens: tuple[int, ...]
    weights: tuple[tuple[str, float], ...]


_TRACES: list[list[RouteTrace]] = []


@contextmanager
def traced_routes() -> Iterator[list[RouteTrace]]:
    """Every routing decision RoutedModel makes while the block runs, in order. A diagnostic:
    it shows whether the routes predicted before a run are the ones the run takes."""
    trace: list[RouteTrace] = []
    _TRACES.append(trace)
    try:
        yield trace
    finally:
        _TRACES.remove(trace)


def _trace(bank: DeltaBank, ids: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor) -> None:
    names = bank.names
    for row_ids, row_mask, row_w in zip(ids.tolist(), mask.tolist(), weights.tolist(),
                                        strict=True):
        entry = RouteTrace(tuple(t for t, m in zip(row_ids, row_mask, strict=True) if m),
                           tuple((n, w) for n, w in zip(names, row_w, strict=True) if w))
        for trace in _TRACES:
            trace.append(entry)


class RoutedModel:
    """Context that makes ``model`` route every forward pass: plain HF calls, ``generate`` and
    lm-eval's HFLM all work unchanged. Routing is decided on the first step of a sequence and
    kept for the cached decoding steps that follow it."""

    def __init__(self, model: nn.Module, bank: DeltaBank, router: str = "learned", *,
                 classifier: RouterClassifier | None = None, tag: str | None = None,
                 pad_token_id: int | None = None):
        self.model, self.bank, self.router = model, bank, get_router(router)
        self.classifier, self.tag = classifier, tag
        self.pad_token_id = pad_token_id
        self._handle = None
        self.last_weights: torch.Tensor | None = None

    def __enter__(self) -> RoutedModel:
        self.bank.install()
        self._handle = self.model.register_forward_pre_hook(self._route, with_kwargs=True)
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self.bank.remove()

    def _route(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            return
        if self.bank.weights is not None and _continuing(kwargs):
            return
        mask = kwargs.get("attention_mask")
        if mask is None:
            mask = ((ids != self.pad_token_id).long() if self.pad_token_id is not None
                    else torch.ones_like(ids))
        inputs = RouteInputs(self.bank, ids, mask, tag=self.tag, classifier=self.classifier)
        self.bank.weights = self.router.select(inputs)
        self.last_weights = self.bank.weights
        if _TRACES:
            _trace(self.bank, ids, mask, self.bank.weights)
