"""Routers that choose, per input, which packs of a state apply: none, tag and learned."""

from .bank import DeltaBank, PackDeltas
from .learned import NONE_CLASS, RouterClassifier, load_router, save_router, train_router
from .routers import ROUTERS, RoutedModel, get_router

__all__ = ["NONE_CLASS", "ROUTERS", "DeltaBank", "PackDeltas", "RoutedModel", "RouterClassifier",
           "get_router", "load_router", "save_router", "train_router"]
