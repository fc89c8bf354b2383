"""The curriculum: seeded splits, checkers, unambiguous prompts, and lm-eval task YAML."""

from __future__ import annotations

import random

import pytest

from skillstore.curriculum.build import write_curriculum
from skillstore.curriculum.skills import CURRICULUM, GENERAL, SKILLS, get_skill, skill_for_prompt
from skillstore.curriculum.validate import load_rows, validate_dataset
from skillstore.errors import ConfigError


@pytest.fixture(scope="module")
def curriculum(tmp_path_factory):
    return write_curriculum(tmp_path_factory.mktemp("cur"), seed=3, n_train=60, n_eval=20)


def test_at_least_five_skills_and_a_general_suite(curriculum):
    assert set(curriculum.skills) >= {"reverse", "sort", "add", "case", "knowledge"}
    for files in [*curriculum.skills.values(), curriculum.general]:
        for split in ("train", "validation", "test"):
            assert validate_dataset(files.split(split)).n_rows > 0


def test_same_seed_same_files_other_seed_other_files(curriculum, tmp_path):
    again = write_curriculum(tmp_path / "a", seed=3, n_train=60, n_eval=20)
    other = write_curriculum(tmp_path / "b", seed=4, n_train=60, n_eval=20)
    for name in curriculum.skills:
        same = validate_dataset(again.skills[name].train).sha256
        assert same == validate_dataset(curriculum.skills[name].train).sha256
    assert (validate_dataset(other.skills["reverse"].train).sha256
            != validate_dataset(again.skills["reverse"].train).sha256)


def test_open_skills_hold_out_their_test_prompts(curriculum):
    for name, files in curriculum.skills.items():
        if SKILLS[name].closed_set:
            continue
        train = {r["prompt"] for r in load_rows(files.train)}
        test = {r["prompt"] for r in load_rows(files.test)}
        assert train.isdisjoint(test), name


def test_checkers_accept_truth_and_reject_wrong_answers():
    rng = random.Random(0)
    for skill in (*CURRICULUM, *GENERAL):
        for _ in range(20):
            row = skill.sample(rng)
            assert skill.check(row["prompt"], row["answer"]), (skill.name, row)
            assert not skill.check(row["prompt"], row["answer"] + "x"), skill.name
    assert not SKILLS["add"].check("add: 12+ab =", "12")
    assert not SKILLS["add"].check("reverse: abc =", "cba")


def test_every_prompt_names_its_skill():
    rng = random.Random(1)
    for skill in (*CURRICULUM, *GENERAL):
        for _ in range(20):
            assert skill_for_prompt(skill.sample(rng)["prompt"]) is skill


def test_unknown_skill_suggests_the_closest():
    with pytest.raises(ConfigError, match="Did you mean 'reverse'"):
        get_skill("revers")


def test_task_yaml_points_at_absolute_jsonl(curriculum):
    text = curriculum.skills["add"].task_yaml.read_text()
    assert "output_type: generate_until" in text
    assert "dataset_path: json" in text
    assert f'test: "{curriculum.skills["add"].test}"' in text
    assert "exact_match" in text


def test_lm_eval_task_manager_loads_the_tasks(curriculum):
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(curriculum.tasks_dir))
    names = [f.task_name for f in curriculum.skills.values()] + [curriculum.general.task_name]
    tasks = manager.load(names)["tasks"]
    assert set(names) <= set(tasks)
    task = tasks[curriculum.skills["add"].task_name]
    docs = list(task.test_docs())
    assert len(docs) == 20
    assert task.doc_to_text(docs[0]) == load_rows(curriculum.skills["add"].test)[0]["prompt"]
    assert task.doc_to_target(docs[0]) == load_rows(curriculum.skills["add"].test)[0]["answer"]
