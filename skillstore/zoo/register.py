"""Register a built zoo in the catalog: its target base, source models and curriculum skills."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from sqlalchemy.orm import Session

from ..catalog import register_base
from ..catalog.models import BaseCheckpoint
from ..curriculum.skills import SKILLS
from ..intake import checkpoint_info, register_skill_dataset
from .build import ZooPaths


@dataclass(frozen=True)
class Registered:
    base: str
    sources: dict[str, str]
    skills: list[str]


def register_checkpoint(session: Session, name: str, folder: str | Path) -> BaseCheckpoint:
    """Register a local checkpoint folder as a base (same name and weights: the existing row)."""
    info = checkpoint_info(str(folder), allow_hub=False)
    return register_base(session, name=name, **asdict(info))


def register_zoo(session: Session, store, paths: ZooPaths, *, base: str = "tiny-llama",
                 skills: list[str] | None = None) -> Registered:
    """Register the zoo's target as ``base``, each source as ``src-<name>``, and the skills
    (training data checked and copied into the blob store, suite = the skill's task YAML)."""
    register_checkpoint(session, base, paths.target)
    sources = {}
    for key, folder in paths.sources.items():
        sources[key] = f"src-{key}"
        register_checkpoint(session, sources[key], folder)
    cur = paths.load_curriculum()
    names = skills or list(cur.skills)
    for name in names:
        files = cur.skills[name]
        register_skill_dataset(session, store, name=name, data=files.train,
                               suite=str(files.task_yaml), description=SKILLS[name].description)
    session.flush()
    return Registered(base, sources, names)
