"""Register a built zoo in the catalog: the target base, the source models and the curriculum skills."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from ..catalog import add_skill, register_base
from ..curriculum.skills import SKILLS


@dataclass(frozen=True)
class Registered:
    base: str
    sources: dict[str, str]
    skills: list[str]


def _architecture(folder) -> str:
    import json

    doc = json.loads((folder / "config.json").read_text())
    return (doc.get("architectures") or [doc.get("model_type") or "unknown"])[0]


def register_checkpoint(session: Session, name: str, folder):
    """Register a local checkpoint folder as a base (same name and weights: the existing row)."""
    from ..errors import NotFoundError
    from ..fingerprint import fingerprint_checkpoint, fingerprint_tokenizer

    try:
        tok = fingerprint_tokenizer(folder)
    except NotFoundError:
        tok = None
    return register_base(session, name=name, uri=str(folder), architecture=_architecture(folder),
                         fingerprint=fingerprint_checkpoint(folder), tokenizer_fingerprint=tok)


def register_zoo(session: Session, store, paths, *, base: str = "tiny-llama",
                 skills: list[str] | None = None) -> Registered:
    """Register the zoo's target as ``base``, each source as ``src-<name>``, and the skills
    (training data copied into the blob store, suite = the skill's lm-eval task YAML)."""
    register_checkpoint(session, base, paths.target)
    sources = {}
    for key, folder in paths.sources.items():
        sources[key] = f"src-{key}"
        register_checkpoint(session, sources[key], folder)
    cur = paths.load_curriculum()
    names = skills or list(cur.skills)
    for name in names:
        files = cur.skills[name]
        add_skill(session, name=name, suite=str(files.task_yaml), description=SKILLS[name].description,
                  data_uri=str(files.train), data_sha256=store.put_file(files.train))
    session.flush()
    return Registered(base, sources, names)
