"""Tiny, deterministic, locally built models: a Llama target and a GPT-2 source, cached by recipe."""

from .build import ModelSpec, ZooPaths, ZooRecipe, build_zoo, zoo_manifest

__all__ = ["ModelSpec", "ZooPaths", "ZooRecipe", "build_zoo", "zoo_manifest"]
