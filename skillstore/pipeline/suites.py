"""Which lm-eval suites measure a skill and the base, and the prompts the learned router trains on."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from ..catalog.models import Skill
from ..errors import NotFoundError
from ..evaluation.cache import GENERAL_SUITE, Suite

TASK_LINE = re.compile(r"^task:\s*(\S+)\s*$", re.MULTILINE)
GENERAL_YAML = "skillstore_general.yaml"
ROUTER_PROMPTS = 200


def _yaml_task(path: Path) -> str:
    m = TASK_LINE.search(path.read_text(encoding="utf-8"))
    if not m:
        raise NotFoundError(f"{str(path)!r} names no lm-eval task (no `task:` line); fix the suite YAML.")
    return m.group(1).strip("'\"")


def _tasks_dir_of(skill: Skill) -> Path | None:
    if skill.suite.endswith((".yaml", ".yml")):
        return Path(skill.suite).parent
    if skill.data_uri:
        guess = Path(skill.data_uri).parent.parent / "tasks"
        if guess.is_dir():
            return guess
    return None


def skill_suite(skill: Skill) -> Suite:
    """A skill's suite: `suite` is a task YAML path, or a task name beside its data's tasks/ folder."""
    if skill.suite.endswith((".yaml", ".yml")):
        path = Path(skill.suite)
        if not path.is_file():
            raise NotFoundError(f"Suite YAML {skill.suite!r} of skill {skill.name!r} does not exist.")
        return Suite(skill.name, path.parent, (_yaml_task(path),), skill.id)
    tasks = _tasks_dir_of(skill)
    if tasks is None:
        raise NotFoundError(f"Skill {skill.name!r} has suite {skill.suite!r} but no tasks folder "
                            "was found; register it with --suite PATH/TO/TASK.yaml.")
    return Suite(skill.name, tasks, (skill.suite,), skill.id)


def general_suite_path(skill: Skill, given: str | None = None) -> str | None:
    """The base's general suite: the given YAML, else skillstore_general.yaml beside the skill's."""
    if given:
        if not Path(given).is_file():
            raise NotFoundError(f"General suite YAML {given!r} does not exist.")
        return str(Path(given).absolute())
    tasks = _tasks_dir_of(skill)
    if tasks is not None and (tasks / GENERAL_YAML).is_file():
        return str(tasks / GENERAL_YAML)
    return None


def general_suite(path: str | None) -> Suite | None:
    if not path:
        return None
    return Suite(GENERAL_SUITE, Path(path).parent, (_yaml_task(Path(path)),), None)


def train_prompts_of_yaml(path: str | Path, limit: int = ROUTER_PROMPTS) -> list[str]:
    """Prompts of a task's training split, read from the data file its YAML names."""
    from ..curriculum.validate import load_rows

    doc = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    files = (doc.get("dataset_kwargs") or {}).get("data_files") or {}
    split = files.get("train") or files.get(doc.get("test_split", "test"))
    if not split:
        return []
    return [r["prompt"] for r in load_rows(split)[:limit]]


def skill_prompts(skill: Skill, store, limit: int = ROUTER_PROMPTS) -> list[str]:
    from .steps import skill_rows

    train, _ = skill_rows(store, skill)
    return [r["prompt"] for r in train[:limit]]
