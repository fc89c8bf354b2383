"""The route a model state gives an input: which packs, by content digest, at which weight.

Packs never change and greedy decoding is deterministic, so two states that give an input the
same route answer it the same way. A route names its packs by blob digest (not by skill name)
and says how they are applied: grafted into the weights (router ``none``) or added by forward
hooks (``tag``, ``learned``); no pack at all is the plain base however it is reached.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from ..routing import NONE_CLASS, load_router
from ..routing.routers import RouteTrace
from ..states.view import StateView
from .loader import suite_tag

# (how the packs apply, ((pack blob digest, weight), ...))
Route = tuple[str, tuple[tuple[str, float], ...]]
BASE: Route = ("base", ())
# The logit lead a top-1 choice needs before it is trusted to be the one the batched run makes:
# the run pools features over padded batches, which moves them by rounding error only.
MARGINS = {torch.float32: 1e-3, torch.float64: 1e-6}
HALF_MARGIN = 0.25  # bfloat16 / float16 bases round far more coarsely


def margin_for(dtype: torch.dtype) -> float:
    return MARGINS.get(dtype, HALF_MARGIN)


def hooked(packs: Sequence[tuple[str, float]]) -> Route:
    packs = tuple((d, float(w)) for d, w in packs if w)
    return ("hook", packs) if packs else BASE


class StateRoutes:
    """How one state routes the inputs of a suite, predicted from the base's features the way
    its router decides in the run; None for an input whose route cannot be told beforehand
    (top-k mixing, a top-1 choice within the margin, or a top probability within the margin
    of the router's abstention threshold). Below the threshold the route is the plain base."""

    def __init__(self, view: StateView, blobs, *, margin: float = MARGINS[torch.float32],
                 cache_dir: str | Path | None = None):
        self.view, self.margin = view, margin
        self.packs = {m.name: (m.blob_digest, m.scale) for m in view.members}
        self.classifier = None
        if view.router == "learned" and view.members:
            self.classifier = load_router(blobs.local_path(view.router_blob_digest, cache_dir))

    @property
    def feature_key(self) -> tuple[str, int] | None:
        """What the router reads of an input (its ``feature_key``); None when routes need no
        features."""
        return self.classifier.feature_key if self.classifier is not None else None

    def routes(self, suite: str, features: torch.Tensor | None, n: int) -> list[Route | None]:
        """The route of each of ``n`` inputs of ``suite`` (``features``: (n, hidden), read only
        by the learned router)."""
        view = self.view
        if not view.members:
            return [BASE] * n
        if view.router == "none":
            return [("graft", tuple((m.blob_digest, m.scale) for m in view.members))] * n
        if view.router == "tag":
            tag = suite_tag(view, suite)
            return [hooked([self.packs[tag]]) if tag else BASE] * n
        clf = self.classifier
        if clf.top_k != 1:
            return [None] * n
        with torch.no_grad():
            logits = clf(features.to(clf.mean.device))
        top = logits.topk(2, dim=-1)
        # the same margin bounds the probability's move: softmax moves no faster than its logits
        confidence = logits.softmax(-1).max(-1).values.tolist()
        threshold = clf.threshold
        # familiarity: the similarity to the top class against that class's bound (-inf: none);
        # with no bounds at all every input is infinitely familiar, so skip the similarities
        below = [math.inf] * len(confidence)
        if clf.familiarity():
            bound = clf.familiar[top.indices[:, 0]]
            similar = clf.similarity(features).gather(-1, top.indices[:, :1]).squeeze(-1)
            below = (similar - bound).tolist()
        out: list[Route | None] = []
        for (first, second), index, p, gap in zip(top.values.tolist(), top.indices[:, 0].tolist(),
                                                  confidence, below, strict=True):
            name = clf.classes[index]
            if threshold is not None and abs(p - threshold) < self.margin:
                out.append(None)
            elif abs(gap) < self.margin:
                out.append(None)  # too near the familiarity bound to call
            elif (threshold is not None and p < threshold) or gap < 0:
                out.append(BASE)  # the router abstains: no pack
            else:
                out.append(None if first - second < self.margin
                           else BASE if name == NONE_CLASS else hooked([self.packs[name]]))
        return out

    def traced(self, trace: RouteTrace) -> Route:
        """The route a RoutedModel of this state took, as ``traced_routes`` recorded it."""
        return hooked([(self.packs[name][0], w) for name, w in trace.weights])


def disagreements(predicted: Mapping[tuple[int, ...], Route | None],
                  trace: Sequence[RouteTrace], routes: StateRoutes) -> tuple[int, int]:
    """(inputs whose traced route differs from the predicted one, inputs compared): every
    traced decision on an input that has a prediction (None predictions are never reused, so
    they are not compared)."""
    compared = differ = 0
    for entry in trace:
        route = predicted.get(entry.tokens)
        if route is None:
            continue
        compared += 1
        differ += routes.traced(entry) != route
    return differ, compared
