"""The command groups shared by several CLI modules (`skillstore pack ...` has many owners)."""

from __future__ import annotations

from dataclasses import dataclass

import typer


@dataclass(frozen=True)
class Group:
    name: str
    help: str
    app: typer.Typer


def _group(name: str, help: str) -> Group:
    return Group(name, help, typer.Typer(help=help, no_args_is_help=True))


BASE = _group("base", "Register and inspect base model checkpoints.")
SKILL = _group("skill", "Register and inspect skills and their datasets.")
PACK = _group("pack", "List, inspect, compress, apply, export and promote SkillPacks.")
JOB = _group("job", "Follow and control learning jobs.")
ZOO = _group("zoo", "Build the tiny local model zoo and skill curriculum.")
STATE = _group("state", "Model states: base plus packs plus router.")
EXPERIMENT = _group("experiment", "Continual-learning experiments: a curriculum under several "
                                  "methods and seeds.")

GROUPS = (BASE, SKILL, PACK, JOB, ZOO, STATE, EXPERIMENT)
