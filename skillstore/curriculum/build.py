"""Writing the curriculum: seeded train/validation/test JSONL per skill plus lm-eval YAML."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import ConfigError
from .lmeval import write_task_yaml
from .router_eval import ROUTER_EVAL_FILE, write_router_eval
from .skills import (
    CURRICULUM,
    CURRICULUM_VERSION,
    GENERAL,
    GENERAL_SUITE,
    NEW_OPENER,
    NEW_PHRASING,
    TRAINED,
    Skill,
    Template,
    pick_template,
)
from .validate import write_jsonl

SPLITS = ("train", "validation", "test")
#: The test rows on held-out templates only, beside a skill's splits.
HELDOUT_FILE = "test_heldout.jsonl"


@dataclass(frozen=True)
class SkillFiles:
    """The files of one skill inside a curriculum folder."""

    name: str
    train: Path
    validation: Path
    test: Path
    task_yaml: Path
    task_name: str
    #: The test rows on held-out templates and their task (None for a suite without any).
    heldout: Path | None = None
    heldout_task_yaml: Path | None = None
    heldout_task_name: str | None = None

    def split(self, name: str) -> Path:
        return {"train": self.train, "validation": self.validation, "test": self.test}[name]


@dataclass(frozen=True)
class Curriculum:
    """A written curriculum: the folder, its skills in learning order, the general suite, and
    the router evaluation rows (skillstore.curriculum.router_eval)."""

    root: Path
    skills: dict[str, SkillFiles]
    general: SkillFiles
    router_eval: Path

    @property
    def tasks_dir(self) -> Path:
        """The folder to pass to lm-eval's ``TaskManager(include_path=...)``."""
        return self.root / "tasks"

    def to_json(self) -> dict:
        return {"version": CURRICULUM_VERSION, "root": str(self.root),
                "tasks_dir": str(self.tasks_dir),
                "skills": {n: _files_json(f) for n, f in self.skills.items()},
                "general": _files_json(self.general), "router_eval": str(self.router_eval)}


def _files_json(f: SkillFiles) -> dict:
    out = {"train": str(f.train), "validation": str(f.validation), "test": str(f.test),
           "task_yaml": str(f.task_yaml), "task_name": f.task_name}
    if f.heldout is not None:
        out |= {"heldout": str(f.heldout), "heldout_task_yaml": str(f.heldout_task_yaml),
                "heldout_task_name": f.heldout_task_name}
    return out


def task_name(skill_name: str) -> str:
    """The lm-eval task name of a skill's suite."""
    return f"skillstore_{skill_name}"


def heldout_task_name(skill_name: str) -> str:
    """The lm-eval task name of a skill's test rows on held-out templates only."""
    return f"skillstore_{skill_name}_heldout"


def _test_templates(skill: Skill, n: int) -> list[Template]:
    """Half the test rows on held-out templates, half on training ones, each cycled in turn;
    the held-out half alternates new phrasings and new openers (Template.kind)."""
    held, seen = skill.held_out_templates, skill.train_templates
    if not held:
        return [seen[i % len(seen)] for i in range(n)]
    kinds = [k for k in ([t for t in held if t.kind == kind] for kind in (NEW_PHRASING,
                                                                           NEW_OPENER)) if k]

    def held_out(j: int) -> Template:
        group = kinds[j % len(kinds)]
        return group[(j // len(kinds)) % len(group)]

    return [held_out(i // 2) if i % 2 == 0 else seen[(i // 2) % len(seen)] for i in range(n)]


def skill_splits(skill: Skill, rng: random.Random, n_train: int,
                 n_eval: int) -> dict[str, list[dict]]:
    """Rows for each split: train and validation in the training templates only, the test split
    in every template, half its rows on held-out ones (each row names its ``template``).

    Open-ended skills never repeat a payload (so never a prompt) across splits. A closed table
    (the facts, the alphabet) cannot be held out, since the skill *is* the table: every entry
    appears in train in every training request (and at random after openers), validation is
    the table in those requests, and test is the table in every request, held-out ones
    included, and after a training and a held-out opener.
    """
    if skill.closed_set:
        requests = [t for t in skill.requests if not t.held_out]
        table = [skill.row(p, t) for p in skill.closed_set for t in requests]
        train = table + [skill.sample(rng) for _ in range(max(0, n_train - len(table)))]
        rng.shuffle(train)
        # Every payload in every request, and each payload after one training opener and one
        # held-out opener, taken in turn so that every template is asked.
        test = [skill.row(p, t) for p in skill.closed_set for t in skill.requests]
        for kind in (TRAINED, NEW_OPENER):
            variants = [t for t in skill.templates if t.opener and t.kind == kind]
            test += [skill.row(p, variants[i % len(variants)])
                     for i, p in enumerate(skill.closed_set) if variants]
        if skill.held_out_templates:
            rng.shuffle(test)  # so that a --limit sees every template
        return {"train": train, "validation": list(table), "test": test}
    seen: set[str] = set()
    payloads: list[str] = []
    want = n_train + 2 * n_eval
    for _ in range(want * 50):
        payload = skill.sample_payload(rng)
        if payload not in seen:
            seen.add(payload)
            payloads.append(payload)
            if len(payloads) == want:
                break
    test = [skill.row(p, t) for p, t in zip(payloads[:n_eval], _test_templates(skill, n_eval),
                                             strict=False)]
    rest = [skill.row(p, pick_template(rng, skill.train_templates)) for p in payloads[n_eval:]]
    return {"train": rest[n_eval:], "validation": rest[:n_eval], "test": test}


def _write_skill(root: Path, skill: Skill | None, name: str,
                 splits: dict[str, list[dict]]) -> SkillFiles:
    paths = {s: write_jsonl(root / name / f"{s}.jsonl", splits[s]) for s in SPLITS}
    yaml_path = write_task_yaml(root / "tasks", task_name(name), paths)
    files = SkillFiles(name, paths["train"], paths["validation"], paths["test"], yaml_path,
                       task_name(name))
    held = {t.id for t in skill.held_out_templates} if skill else set()
    if not held:
        return files
    heldout = write_jsonl(root / name / HELDOUT_FILE,
                          [r for r in splits["test"] if r["template"] in held])
    heldout_yaml = write_task_yaml(root / "tasks", heldout_task_name(name), {"test": heldout})
    return replace(files, heldout=heldout, heldout_task_yaml=heldout_yaml,
                   heldout_task_name=heldout_task_name(name))


def write_curriculum(root: str | Path, *, seed: int = 0, n_train: int = 2000,
                     n_eval: int = 200) -> Curriculum:
    """Generate every skill's splits from ``seed`` into ``root`` and return their paths.

    The general suite mixes the base's own skills (copying and simple lookups) in equal parts.
    Each skill also gets ``test_heldout.jsonl`` and its task; ``router_eval.jsonl`` holds
    ``n_eval`` mixed-skill and ``n_eval`` general prompts (skillstore.curriculum.router_eval).
    """
    root = Path(root).absolute()
    skills: dict[str, SkillFiles] = {}
    tests: dict[str, list[dict]] = {}
    for i, skill in enumerate(CURRICULUM):
        splits = skill_splits(skill, random.Random(f"{seed}:{i}:{skill.name}"), n_train, n_eval)
        skills[skill.name] = _write_skill(root, skill, skill.name, splits)
        tests[skill.name] = splits["test"]
    mixed: dict[str, list[dict]] = {s: [] for s in SPLITS}
    per = max(1, n_train // len(GENERAL))
    for skill in GENERAL:
        splits = skill_splits(skill, random.Random(f"{seed}:general:{skill.name}"), per,
                              n_eval // len(GENERAL))
        _write_skill(root / GENERAL_SUITE, skill, skill.name, splits)
        for s in SPLITS:
            mixed[s].extend(splits[s])
    rng = random.Random(f"{seed}:general")
    for s in SPLITS:
        rng.shuffle(mixed[s])
    general = _write_skill(root, None, GENERAL_SUITE, mixed)
    router_eval = write_router_eval(root / ROUTER_EVAL_FILE, tests, mixed["test"], seed=seed,
                                    n=n_eval)
    curriculum = Curriculum(root, skills, general, router_eval)
    (root / "curriculum.json").write_text(json.dumps(curriculum.to_json(), indent=2) + "\n")
    return curriculum


def load_curriculum(root: str | Path) -> Curriculum:
    """Read back a curriculum folder written by :func:`write_curriculum`."""
    data = json.loads((Path(root) / "curriculum.json").read_text())
    if data.get("version") != CURRICULUM_VERSION:
        raise ConfigError(f"Curriculum {str(root)!r} is version {data.get('version', 1)}, this "
                          f"skillstore reads version {CURRICULUM_VERSION}; rebuild it "
                          "(`skillstore zoo build --force`, or write_curriculum).")

    def files(name: str, d: dict) -> SkillFiles:
        held = d.get("heldout")  # the general suite has no held-out templates
        return SkillFiles(name, Path(d["train"]), Path(d["validation"]), Path(d["test"]),
                          Path(d["task_yaml"]), d["task_name"], held and Path(held),
                          held and Path(d["heldout_task_yaml"]), d.get("heldout_task_name"))

    return Curriculum(Path(data["root"]), {n: files(n, d) for n, d in data["skills"].items()},
                      files(GENERAL_SUITE, data["general"]), Path(data["router_eval"]))
