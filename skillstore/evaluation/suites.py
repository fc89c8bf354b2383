"""Suites of a state (one per skill plus the base's general suite) and the loader that materialises it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa

from ..catalog.models import Skill
from ..errors import NotFoundError
from ..states.materialise import load_packs, materialise
from ..states.view import StateView
from .cache import GENERAL_SUITE, Loader, Suite


def skill_tasks(skill: Skill) -> tuple[str, ...]:
    """A skill's ``suite`` column names its lm-eval tasks, comma-separated."""
    return tuple(t.strip() for t in skill.suite.split(",") if t.strip())


def state_suites(session, skills: list[str], tasks_dir: str | Path, *,
                 general_task: str | None = "skillstore_general") -> list[Suite]:
    """One suite per skill (named after the skill) plus the general suite, all under ``tasks_dir``."""
    rows = {s.name: s for s in session.scalars(sa.select(Skill).where(Skill.name.in_(skills)))}
    missing = [s for s in skills if s not in rows]
    if missing:
        raise NotFoundError(f"Skill {missing[0]!r} is not in the catalog; add it with `skillstore skill add`.")
    suites = [Suite(name, Path(tasks_dir), skill_tasks(rows[name]), rows[name].id) for name in skills]
    if general_task:
        suites.append(Suite(GENERAL_SUITE, Path(tasks_dir), (general_task,), None))
    return suites


def state_loader(model, tokenizer, view: StateView, blobs, *, cache_dir: str | Path | None = None) -> Loader:
    """The Loader for evaluate_state: the tag router gets each skill's own pack (none for the
    general suite); every other router routes by itself. Packs are read once."""
    packs = load_packs(view, blobs, cache_dir)

    @contextmanager
    def load(suite: Suite) -> Iterator[tuple[object, object]]:
        tag = suite.name if view.router == "tag" and suite.name in view.skills else None
        with materialise(model, view, blobs, tag=tag, pad_token_id=tokenizer.pad_token_id,
                         cache_dir=cache_dir, packs=packs) as m:
            yield m, tokenizer

    return load
