"""Writing the curriculum: seeded train/validation/test JSONL per skill plus lm-eval YAML."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from .lmeval import write_task_yaml
from .skills import CURRICULUM, GENERAL, GENERAL_SUITE, Skill
from .validate import write_jsonl

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class SkillFiles:
    """The files of one skill inside a curriculum folder."""

    name: str
    train: Path
    validation: Path
    test: Path
    task_yaml: Path
    task_name: str

    def split(self, name: str) -> Path:
        return {"train": self.train, "validation": self.validation, "test": self.test}[name]


@dataclass(frozen=True)
class Curriculum:
    """A written curriculum: the folder, its skills in learning order, and the general suite."""

    root: Path
    skills: dict[str, SkillFiles]
    general: SkillFiles

    @property
    def tasks_dir(self) -> Path:
        """The folder to pass to lm-eval's ``TaskManager(include_path=...)``."""
        return self.root / "tasks"

    def to_json(self) -> dict:
        return {"root": str(self.root), "tasks_dir": str(self.tasks_dir),
                "skills": {n: _files_json(f) for n, f in self.skills.items()},
                "general": _files_json(self.general)}


def _files_json(f: SkillFiles) -> dict:
    return {"train": str(f.train), "validation": str(f.validation), "test": str(f.test),
            "task_yaml": str(f.task_yaml), "task_name": f.task_name}


def task_name(skill_name: str) -> str:
    """The lm-eval task name of a skill's suite."""
    return f"skillstore_{skill_name}"


def skill_splits(skill: Skill, rng: random.Random, n_train: int,
                 n_eval: int) -> dict[str, list[dict]]:
    """Rows for each split; open-ended skills never repeat a prompt across splits.

    A closed table (the facts, the alphabet) cannot be held out, since the skill *is* the
    table: every entry appears in train, and validation/test are the table itself.
    """
    if skill.closed_set:
        table = [skill.row(p) for p in skill.closed_set]
        train = table + [skill.row(rng.choice(skill.closed_set))
                         for _ in range(max(0, n_train - len(table)))]
        rng.shuffle(train)
        return {"train": train, "validation": list(table), "test": list(table)}
    seen: set[str] = set()
    rows: list[dict] = []
    want = n_train + 2 * n_eval
    for _ in range(want * 50):
        row = skill.sample(rng)
        if row["prompt"] not in seen:
            seen.add(row["prompt"])
            rows.append(row)
            if len(rows) == want:
                break
    test, validation, train = rows[:n_eval], rows[n_eval:2 * n_eval], rows[2 * n_eval:]
    return {"train": train, "validation": validation, "test": test}


def _write_skill(root: Path, name: str, splits: dict[str, list[dict]]) -> SkillFiles:
    paths = {s: write_jsonl(root / name / f"{s}.jsonl", splits[s]) for s in SPLITS}
    yaml_path = write_task_yaml(root / "tasks", task_name(name), paths)
    return SkillFiles(name, paths["train"], paths["validation"], paths["test"], yaml_path,
                      task_name(name))


def write_curriculum(root: str | Path, *, seed: int = 0, n_train: int = 2000,
                     n_eval: int = 200) -> Curriculum:
    """Generate every skill's splits from ``seed`` into ``root`` and return their paths.

    The general suite mixes the base's own skills (copying and simple lookups) in equal parts.
    """
    root = Path(root).absolute()
    skills: dict[str, SkillFiles] = {}
    for i, skill in enumerate(CURRICULUM):
        splits = skill_splits(skill, random.Random(f"{seed}:{i}:{skill.name}"), n_train, n_eval)
        skills[skill.name] = _write_skill(root, skill.name, splits)
    mixed: dict[str, list[dict]] = {s: [] for s in SPLITS}
    per = max(1, n_train // len(GENERAL))
    for skill in GENERAL:
        splits = skill_splits(skill, random.Random(f"{seed}:general:{skill.name}"), per,
                              n_eval // len(GENERAL))
        _write_skill(root / GENERAL_SUITE, skill.name, splits)
        for s in SPLITS:
            mixed[s].extend(splits[s])
    rng = random.Random(f"{seed}:general")
    for s in SPLITS:
        rng.shuffle(mixed[s])
    general = _write_skill(root, GENERAL_SUITE, mixed)
    curriculum = Curriculum(root, skills, general)
    (root / "curriculum.json").write_text(json.dumps(curriculum.to_json(), indent=2) + "\n")
    return curriculum


def load_curriculum(root: str | Path) -> Curriculum:
    """Read back a curriculum folder written by :func:`write_curriculum`."""
    data = json.loads((Path(root) / "curriculum.json").read_text())

    def files(name: str, d: dict) -> SkillFiles:
        return SkillFiles(name, Path(d["train"]), Path(d["validation"]), Path(d["test"]),
                          Path(d["task_yaml"]), d["task_name"])

    return Curriculum(Path(data["root"]), {n: files(n, d) for n, d in data["skills"].items()},
                      files(GENERAL_SUITE, data["general"]))
