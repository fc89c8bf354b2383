"""Continual-learning experiments: a spec of curriculum, methods and seeds (docs/experiments.md)."""

from .spec import ExperimentSpec, check_spec, load_spec, parse_spec

__all__ = ["ExperimentSpec", "check_spec", "load_spec", "parse_spec"]
