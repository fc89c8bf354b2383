"""Tiny, deterministic, locally built models: a Llama target and GPT-2 and Qwen2 sources, cached
by recipe, and their registration in the catalog."""

from .build import ModelSpec, ZooPaths, ZooRecipe, build_zoo, zoo_manifest
from .register import Registered, register_checkpoint, register_zoo

__all__ = ["ModelSpec", "Registered", "ZooPaths", "ZooRecipe", "build_zoo", "register_checkpoint",
           "register_zoo", "zoo_manifest"]
