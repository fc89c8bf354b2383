"""Which lm-eval suites measure a skill and the base: the one reading of ``Skill.suite``.

A skill's ``suite`` is a comma-separated list of lm-eval tasks, each given as either

* the path of its task YAML (what the zoo registers, what `skillstore skill add --suite
  PATH/TO/TASK.yaml` records, made absolute, and what `skill add` without a suite writes for a
  held-out split: skillstore.heldout): it resolves on its own; or
* a task name (`skill add --suite NAME`): it is defined by a YAML under a tasks folder that the
  caller names (`--tasks-dir`), and fails clearly without one.

The base's general suite is a task YAML too: the one a learning request names, else
``skillstore_general.yaml`` beside the skills' YAML (the zoo curriculum writes it there), else
the behaviour suite `skillstore base add` built for the base (skillstore.behaviour).
Every caller (the pipeline's evaluate step, `skillstore state eval`, the demo) resolves suites
here, so the eval cache holds one result per (state, suite version) whoever asked for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa
import yaml

from ..catalog.models import BaseCheckpoint, Skill
from ..curriculum.validate import load_rows
from ..errors import ConfigError, EvaluationError, NotFoundError
from .cache import Suite
from .runner import task_files, yaml_task
from .scores import GENERAL_SUITE

GENERAL_YAML = "skillstore_general.yaml"
YAML_SUFFIXES = (".yaml", ".yml")


def _entries(suite: str) -> list[str]:
    return [e.strip() for e in suite.split(",") if e.strip()]


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _is_yaml(entry: str) -> bool:
    return entry.endswith(YAML_SUFFIXES)


def _yaml_entry(entry: str, owner: str) -> tuple[Path, str]:
    path = Path(entry).expanduser()
    if not path.is_file():
        raise NotFoundError(f"Task YAML {entry!r} ({owner}) does not exist; restore it, or "
                            "register the skill again with --suite PATH/TO/TASK.yaml.")
    task = yaml_task(path)
    if task is None:
        raise EvaluationError(f"Task YAML {entry!r} ({owner}) names no lm-eval task "
                              "(no `task:` line); fix the YAML.")
    return path.absolute(), task


def _resolve(suite: str, owner: str, tasks_dir: str | Path | None) -> tuple[Path, tuple[str, ...]]:
    """(include path, task names) of a suite string."""
    folders, tasks = [], []
    for entry in _entries(suite):
        if _is_yaml(entry):
            path, task = _yaml_entry(entry, owner)
            folders.append(path.parent)
        elif tasks_dir is None:
            raise NotFoundError(f"{_cap(owner)} names the lm-eval task {entry!r} but no tasks "
                                "folder was given; pass --tasks-dir (the folder of its YAML), or "
                                "register the suite as the path of its task YAML.")
        else:
            folders.append(Path(tasks_dir).absolute())
            task = entry
        tasks.append(task)
    if not tasks:
        raise ConfigError(f"{_cap(owner)} is empty; register one with --suite PATH/TO/TASK.yaml.")
    if len(set(folders)) > 1:
        raise ConfigError(f"The tasks of {owner} live in several folders "
                          f"({', '.join(sorted({str(f) for f in folders}))}); keep one suite's "
                          "task YAML in one folder.")
    return folders[0], tuple(tasks)


def skill_suite(skill: Skill, tasks_dir: str | Path | None = None) -> Suite:
    """The suite that measures ``skill``, named after it."""
    folder, tasks = _resolve(skill.suite, f"the suite of skill {skill.name!r}", tasks_dir)
    return Suite(skill.name, folder, tasks, skill.id)


def general_suite(given: str | Path | None = None, *, beside: Sequence[Suite] = (),
                  tasks_dir: str | Path | None = None,
                  base: BaseCheckpoint | None = None) -> Suite | None:
    """The base's general suite: ``given`` (a task YAML, or a task name under ``tasks_dir``),
    else GENERAL_YAML in the folder of the first of ``beside`` that has one, else in
    ``tasks_dir``, else the behaviour suite registered with ``base`` (skillstore.behaviour);
    None when there is none."""
    if given:
        folder, tasks = _resolve(str(given), "the general suite", tasks_dir)
        return Suite(GENERAL_SUITE, folder, tasks, None)
    folders = [s.include_path for s in beside] + ([Path(tasks_dir)] if tasks_dir else [])
    for folder in folders:
        if (Path(folder) / GENERAL_YAML).is_file():
            return general_suite(Path(folder) / GENERAL_YAML)
    if base is not None and base.behaviour:
        folder, tasks = _resolve(base.behaviour["suite"],
                                 f"the behaviour suite of base {base.name!r}", None)
        return Suite(GENERAL_SUITE, folder, tasks, None)
    return None


def state_suites(session, skills: Sequence[str], *, tasks_dir: str | Path | None = None,
                 general: Suite | None = None) -> list[Suite]:
    """One suite per skill (in the order given), then ``general`` when there is one."""
    rows = {s.name: s for s in session.scalars(sa.select(Skill).where(Skill.name.in_(skills)))}
    missing = [s for s in skills if s not in rows]
    if missing:
        raise NotFoundError(f"Skill {missing[0]!r} is not in the catalog; add it with "
                            "`skillstore skill add`.")
    return [skill_suite(rows[name], tasks_dir) for name in skills] + ([general] if general else [])


def normalise_suite(suite: str) -> str:
    """A suite as the catalog stores it: task YAML entries checked and made absolute (so a
    worker in another folder reads the same file), task names kept."""
    entries = _entries(suite)
    out = [str(_yaml_entry(e, "the skill's suite")[0]) if _is_yaml(e) else e for e in entries]
    return ",".join(out)


class _TaskYamlLoader(yaml.SafeLoader):
    """lm-eval YAML may hold `!function` tags; they name code, never data files, so skip them."""


_TaskYamlLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


def suite_prompts(suite: Suite, limit: int, *, split: str = "train") -> list[str]:
    """Up to ``limit`` prompts of the suite's first task, read from the local data file its
    YAML names: the training split (else the test split), or with ``split="test"`` the test
    split only; [] when it names none."""
    path = task_files(Path(suite.include_path)).get(suite.tasks[0])
    if path is None:
        raise NotFoundError(f"Task {suite.tasks[0]!r} has no YAML under "
                            f"{str(suite.include_path)!r}; write it or fix the suite.")
    doc = yaml.load(path.read_text(encoding="utf-8"), Loader=_TaskYamlLoader) or {}
    files = (doc.get("dataset_kwargs") or {}).get("data_files") or {}
    if not isinstance(files, dict):
        return []
    test = files.get(doc.get("test_split", "test"))
    path = test if split == "test" else files.get("train") or test
    if not path or not Path(path).is_file():
        return []
    return [r["prompt"] for r in load_rows(path)[:limit]]
