"""The curriculum: seeded splits, prompt templates (some held out), checkers, unambiguous
prompts, lm-eval task YAML, and the router evaluation rows."""

from __future__ import annotations

import json
import random

import pytest

from skillstore.curriculum.build import load_curriculum, skill_splits, write_curriculum
from skillstore.curriculum.router_eval import MAX_MIXED_CHARS, load_router_eval
from skillstore.curriculum.skills import (
    CURRICULUM,
    GENERAL,
    HELD_OUT_OPENERS,
    KINDS,
    MAX_PROMPT_CHARS,
    NEW_OPENER,
    NEW_PHRASING,
    SKILLS,
    TRAIN_OPENERS,
    TRAINED,
    get_skill,
    skill_for_prompt,
)
from skillstore.curriculum.validate import load_rows, validate_dataset
from skillstore.errors import ConfigError, DatasetError


@pytest.fixture(scope="module")
def curriculum(tmp_path_factory):
    return write_curriculum(tmp_path_factory.mktemp("cur"), seed=3, n_train=60, n_eval=20)


def test_at_least_five_skills_and_a_general_suite(curriculum):
    assert set(curriculum.skills) >= {"reverse", "sort", "add", "case", "knowledge"}
    for files in [*curriculum.skills.values(), curriculum.general]:
        for split in ("train", "validation", "test"):
            assert validate_dataset(files.split(split)).n_rows > 0
    for files in curriculum.skills.values():
        assert validate_dataset(files.heldout).n_rows > 0
    assert curriculum.general.heldout is None
    assert load_curriculum(curriculum.root) == curriculum


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
            row = skill.sample(rng, skill.templates)
            assert skill.check(row["prompt"], row["answer"]), (skill.name, row)
            assert not skill.check(row["prompt"], row["answer"] + "x"), skill.name
    assert not SKILLS["add"].check("add: 12+ab =", "12")
    assert not SKILLS["add"].check("reverse: abc =", "cba")
    assert SKILLS["add"].check("What do 12 and 30 make?", "42")
    assert not SKILLS["reverse"].check("What is abc written backwards? now", "cba")


def test_every_prompt_in_every_template_parses_to_its_skill_alone():
    rng = random.Random(1)
    for skill in (*CURRICULUM, *GENERAL):
        for template in skill.templates:
            for _ in range(10):
                row = skill.sample(rng, [template])
                owners = [s for s in (*CURRICULUM, *GENERAL) if s.parse(row["prompt"])]
                assert owners == [skill], (template.id, row["prompt"])
                assert skill_for_prompt(row["prompt"]) is skill
                assert skill.parse(row["prompt"])[0] == template


def test_natural_templates_name_neither_the_skill_nor_its_keyword():
    ids = [t.id for s in (*CURRICULUM, *GENERAL) for t in s.templates]
    assert len(ids) == len(set(ids))
    for skill in CURRICULUM:
        natural = skill.requests[1:]
        assert len(natural) >= 3 and any(t.held_out for t in natural), skill.name
        assert not skill.templates[0].held_out and skill.templates[0].id.endswith(":keyword")
        banned = {skill.name, skill.keyword, *(w for w in skill.keyword.split() if len(w) > 2)}
        for template in [t for t in skill.templates if ":keyword" not in t.id]:
            text = template.text.lower()
            assert not [w for w in banned if w in text], (template.id, template.text)


def test_openers_are_shared_by_every_skill_and_held_out_ones_are_new():
    assert not set(TRAIN_OPENERS) & set(HELD_OUT_OPENERS)
    for skill in CURRICULUM:
        trained = [t for t in skill.requests if not t.held_out]
        for opener, kind in [*((o, TRAINED) for o in TRAIN_OPENERS),
                             *((o, NEW_OPENER) for o in HELD_OUT_OPENERS)]:
            variants = [t for t in skill.templates if t.opener == opener]
            assert [t.text for t in variants] == [opener + t.text for t in trained], skill.name
            assert {t.kind for t in variants} == {kind}, (skill.name, opener)
        phrasings = [t for t in skill.templates if t.kind == NEW_PHRASING]
        assert phrasings and all(not t.opener for t in phrasings), skill.name
    for skill in GENERAL:  # the base's own forms, as it was trained on them
        assert [t.kind for t in skill.templates] == [TRAINED], skill.name


def _parsed(name, rows):
    skill = SKILLS[name]
    out = []
    for row in rows:
        parsed = skill.parse(row["prompt"])
        assert parsed is not None, (name, row)
        assert parsed[0].id == row["template"], (name, row)  # the recorded id is the true one
        out.append(parsed)
    return out


def test_training_rows_never_use_a_held_out_template(curriculum):
    for name, files in curriculum.skills.items():
        for split in ("train", "validation"):
            held = [t.id for t, _ in _parsed(name, load_rows(files.split(split))) if t.held_out]
            assert held == [], (name, split, held[:3])


def test_the_test_split_mixes_every_kind_of_template(curriculum):
    for name, files in curriculum.skills.items():
        used = [t for t, _ in _parsed(name, load_rows(files.test))]
        assert {t.kind for t in used} == set(KINDS), name
        assert {t.id for t in used if t.kind == NEW_PHRASING} == {
            t.id for t in SKILLS[name].templates if t.kind == NEW_PHRASING}, name
    for skill in CURRICULUM:  # a test split as large as the templates asks every one
        splits = skill_splits(skill, random.Random(0), 100, 2 * len(skill.templates))
        assert {r["template"] for r in splits["test"]} == {t.id for t in skill.templates}
        kinds = [skill.template(r["template"]).kind for r in splits["test"]]
        if not skill.closed_set:  # half held out, split evenly between the held-out kinds
            assert kinds.count(NEW_PHRASING) == kinds.count(NEW_OPENER) == len(kinds) // 4


def test_every_answer_is_the_solvers_answer_to_the_payload(curriculum):
    for name, files in curriculum.skills.items():
        skill = SKILLS[name]
        for path in (files.train, files.validation, files.test, files.heldout):
            rows = load_rows(path)
            for row, (_, payload) in zip(rows, _parsed(name, rows), strict=True):
                assert row["answer"] == skill.solve(payload), (name, row)
                assert skill.check(row["prompt"], row["answer"])
                assert len(row["prompt"]) <= MAX_PROMPT_CHARS, row["prompt"]


def test_held_out_task_reads_only_held_out_templates(curriculum):
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(curriculum.tasks_dir))
    names = {n: f.heldout_task_name for n, f in curriculum.skills.items()}
    assert names["reverse"] == "skillstore_reverse_heldout"
    tasks = manager.load(list(names.values()))["tasks"]
    for name, files in curriculum.skills.items():
        task = tasks[names[name]]
        prompts = [task.doc_to_text(d) for d in task.test_docs()]
        test = load_rows(files.test)
        want = [r["prompt"] for r in test if SKILLS[name].template(r["template"]).held_out]
        assert prompts == want and 0 < len(prompts) < len(test), name
        assert all(SKILLS[name].parse(p)[0].held_out for p in prompts), name


def test_router_eval_holds_mixed_and_general_prompts(curriculum):
    rows = load_router_eval(curriculum.router_eval)
    mixed = [r for r in rows if r["kind"] == "mixed"]
    general = [r for r in rows if r["kind"] == "general"]
    assert len(mixed) == len(general) == 20 and len(rows) == 40
    assert {tuple(sorted(r["skills"])) for r in mixed} == {
        tuple(sorted((a, b))) for a in SKILLS for b in SKILLS if a < b}
    for row in mixed:
        first, second = (SKILLS[n] for n in row["skills"])
        words = row["prompt"].split(" ")
        cuts = [" ".join(words[:i]) for i in range(1, len(words))]
        assert any(first.parse(c) and second.parse(row["prompt"][len(c) + 1:]) for c in cuts), row
        assert len(row["prompt"]) <= MAX_MIXED_CHARS
    for row in general:
        assert row["skills"] == [] and skill_for_prompt(row["prompt"]) not in CURRICULUM, row
    assert any(skill_for_prompt(r["prompt"]) is None for r in general)  # natural general forms


def test_router_eval_rows_missing_a_field_are_refused(tmp_path):
    path = tmp_path / "router_eval.jsonl"
    path.write_text(json.dumps({"prompt": "sort: abc =", "skills": ["sort"], "kind": "x"}) + "\n")
    with pytest.raises(DatasetError, match="router_eval.jsonl:1: .*templates"):
        load_router_eval(path)


def test_a_curriculum_of_another_version_is_refused(curriculum, tmp_path):
    data = json.loads((curriculum.root / "curriculum.json").read_text())
    (tmp_path / "curriculum.json").write_text(json.dumps({**data, "version": 1}))
    with pytest.raises(ConfigError, match="version 1.*rebuild"):
        load_curriculum(tmp_path)


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
