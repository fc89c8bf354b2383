"""Experiment fixtures: a migrated SQLite catalog with a base and two skills, and specs for it."""

from __future__ import annotations

import pytest

from skillstore.catalog import add_skill, migrate, register_base
from skillstore.catalog.db import make_engine, session_scope
from skillstore.experiments import parse_spec
from tests.composition.conftest import tiny_world  # noqa: F401 - a saved tiny base


def spec_doc(**changes) -> dict:
    """A spec over the catalog fixture's base and skills: two methods, two seeds."""
    return {"name": "two-skills", "base": "tiny", "skills": [{"name": "arith"}, {"name": "sort"}],
            "methods": {"naive_ft": None, "joint": None}, "seeds": [0, 1], **changes}


@pytest.fixture
def db_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'catalog.db'}"


@pytest.fixture
def session(db_url):
    migrate.upgrade(db_url)
    engine = make_engine(db_url)
    with session_scope(engine) as s:
        register_base(s, name="tiny", uri="/models/tiny", architecture="LlamaForCausalLM",
                      fingerprint="sha256:" + "0" * 64)
        for name in ("arith", "sort"):
            add_skill(s, name=name, suite=f"{name}_suite", description=name)
        s.flush()
        yield s
    engine.dispose()


@pytest.fixture
def spec():
    return parse_spec(spec_doc())
