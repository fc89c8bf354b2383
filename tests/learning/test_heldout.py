"""A skill given only as a JSONL: its held-out split, the task YAML made for it, the refusals."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from skillstore.catalog import collect_garbage, init_workspace, register_base
from skillstore.catalog.models import Skill
from skillstore.errors import ConfigError, DatasetError, NotFoundError
from skillstore.evaluation.suites import skill_suite
from skillstore.heldout import (
    MIN_TEST_ROWS,
    SUITES_DIR,
    default_test_size,
    plan_suite,
    split_dataset,
    write_suite,
)
from skillstore.intake import register_skill_dataset
from skillstore.pipeline.request import LearnRequest, check_request
from skillstore.settings import Settings
from skillstore.skilldata import skill_rows


def successor_rows(n: int, start: int = 100) -> list[dict]:
    return [{"prompt": f"After {k} comes", "answer": f" {k + 1}"} for k in range(start, start + n)]


def write_rows(path, rows: list[dict]):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def catalog(tmp_path):
    cat = init_workspace(Settings(home=tmp_path / "ws"))
    yield cat
    cat.close()


def register(catalog, data, name: str = "successor", **kw):
    with catalog.session() as s:
        row = register_skill_dataset(s, catalog.blobs, name=name, data=data,
                                     suites_dir=catalog.settings.home / SUITES_DIR, **kw)
        return row.id, row.suite, row.heldout


def test_default_size_is_the_power_calculation_capped_at_a_fifth():
    assert default_test_size(300) == 60
    assert default_test_size(100_000) == 792  # a 5-point drop at 80% accuracy, power 0.8


def test_split_is_seeded_disjoint_and_sized(tmp_path):
    data = write_rows(tmp_path / "succ.jsonl", successor_rows(300))
    first, again = split_dataset(data), split_dataset(data, seed=0)
    other = split_dataset(data, seed=1)
    assert (len(first.train), len(first.test)) == (240, 60)
    assert first.test == again.test and first.train == again.train
    assert first.test != other.test
    test_prompts = {r["prompt"] for r in first.test}
    assert not test_prompts & {r["prompt"] for r in first.train}
    assert len(test_prompts | {r["prompt"] for r in first.train}) == 300
    assert len(split_dataset(data, test_size=120).test) == 120


def test_repeated_rows_are_dropped_and_a_prompt_with_two_answers_is_refused(tmp_path):
    rows = successor_rows(300)
    data = write_rows(tmp_path / "dup.jsonl", rows + rows[:5])
    split = split_dataset(data)
    assert split.duplicates_dropped == 5 and len(split.train) + len(split.test) == 300
    clash = write_rows(tmp_path / "clash.jsonl",
                       rows + [{"prompt": rows[3]["prompt"], "answer": " 7"}])
    with pytest.raises(DatasetError, match=r"clash.jsonl:301: .* also on line 4"):
        split_dataset(clash)


def test_too_few_rows_are_refused_naming_the_file(tmp_path):
    data = write_rows(tmp_path / "few.jsonl", successor_rows(120))
    with pytest.raises(DatasetError, match=r"few.jsonl: 120 distinct prompts .* add rows"):
        split_dataset(data)
    mid = write_rows(tmp_path / "mid.jsonl", successor_rows(200))
    with pytest.raises(DatasetError, match="pass --test-size between 50 and 100"):
        split_dataset(mid)  # a fifth is 40 test rows: under the floor
    assert len(split_dataset(mid, test_size=MIN_TEST_ROWS).test) == MIN_TEST_ROWS
    with pytest.raises(DatasetError, match="50 test and 100 training rows"):
        split_dataset(mid, test_size=150)


def test_a_metric_that_does_not_fit_the_rows_is_refused_naming_the_row(tmp_path):
    rows = successor_rows(300)
    rows[7] = {"prompt": "After ten comes", "answer": " eleven"}
    data = write_rows(tmp_path / "words.jsonl", rows)
    with pytest.raises(DatasetError, match=r"words.jsonl:8: answer ' eleven' has no number"):
        split_dataset(data, metric="number")
    rows[7] = {"prompt": "Nothing after", "answer": ""}
    empty = write_rows(tmp_path / "empty.jsonl", rows)
    with pytest.raises(DatasetError, match=r"empty.jsonl:8: answer is empty"):
        split_dataset(empty, metric="loglikelihood")
    rows[7] = {"prompt": "Two lines", "answer": " 1\n2"}
    lines = write_rows(tmp_path / "lines.jsonl", rows)
    with pytest.raises(DatasetError, match=r"lines.jsonl:8: answer spans several lines"):
        split_dataset(lines)
    assert split_dataset(lines, metric="loglikelihood").metric == "loglikelihood"
    with pytest.raises(ConfigError, match="Did you mean 'number'"):
        split_dataset(data, metric="numbr")


def _load_task(plan):
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(plan.folder), include_defaults=False)
    return manager.load([plan.task])["tasks"][plan.task]


def test_task_yaml_is_what_the_zoo_writes_and_lm_eval_loads_it(catalog, tmp_path):
    data = write_rows(tmp_path / "succ.jsonl", successor_rows(300))
    split = split_dataset(data)
    plan = plan_suite(tmp_path / "suites", "successor", split)
    record = write_suite(catalog.blobs, plan)
    text = plan.yaml_path.read_text()
    for line in ("task: skillstore_successor", "output_type: generate_until",
                 'target_delimiter: ""', "  - metric: exact_match", "test_split: test"):
        assert line in text
    assert f'test: "{plan.folder / "test.jsonl"}"' in text
    assert record["suite_version"].startswith("sha256:") and record["n_test"] == 60
    assert catalog.blobs.get_bytes(record["test_sha256"]).decode().count("\n") == 60
    task = _load_task(plan)
    docs = list(task.test_docs())
    assert [task.doc_to_text(d) for d in docs] == [r["prompt"] for r in split.test]
    assert [task.doc_to_target(d) for d in docs] == [r["answer"] for r in split.test]
    # Another seed is another suite folder: a measured suite never changes under a skill.
    assert plan_suite(tmp_path / "suites", "successor", split_dataset(data, seed=1)).folder \
        != plan.folder


def _generated(task, doc, text: str) -> dict:
    from lm_eval.api.instance import Instance

    inst = Instance(request_type="generate_until", doc=doc, arguments=("", {}), idx=0)
    inst.resps = [text]
    for ensemble in task._filters:
        ensemble.apply([inst])
    return task.process_results(doc, [inst.filtered_resps["none"]])


def test_number_and_loglikelihood_tasks_score_as_documented(catalog, tmp_path):
    data = write_rows(tmp_path / "succ.jsonl", successor_rows(300))
    number = plan_suite(tmp_path / "suites", "succ", split_dataset(data, metric="number"))
    write_suite(catalog.blobs, number)
    task = _load_task(number)
    doc = next(iter(task.test_docs()))
    value = doc["answer"].strip()
    assert _generated(task, doc, f" {value} it is")["exact_match"] == 1.0
    assert _generated(task, doc, f" 1{value}")["exact_match"] == 0.0
    likely = plan_suite(tmp_path / "suites", "succ", split_dataset(data, metric="loglikelihood"))
    write_suite(catalog.blobs, likely)
    task = _load_task(likely)
    assert task.OUTPUT_TYPE == "loglikelihood"
    doc = next(iter(task.test_docs()))
    assert task.doc_to_target(doc) == doc["answer"]
    assert task.process_results(doc, [(-0.5, True)]) == {"acc": 1}


def test_an_answer_that_looks_like_a_list_is_scored_as_text(catalog, tmp_path):
    """Answers such as "[3, 4]" stay text. Through a "{{answer}}" template lm-eval turned them
    into Python lists, which no generated text equals: such a skill scored 0 whatever the
    model said, so it could never be promoted. The task also reads no training rows."""
    rows = [{"prompt": f"Pair after {k}:", "answer": f"[{k + 1}, {k + 2}]"} for k in range(300)]
    data = write_rows(tmp_path / "pairs.jsonl", rows)
    for metric in ("exact_match", "loglikelihood"):
        plan = plan_suite(tmp_path / "suites", f"pairs_{metric}", split_dataset(data,
                                                                              metric=metric))
        write_suite(catalog.blobs, plan)
        task = _load_task(plan)
        doc = next(iter(task.test_docs()))
        assert task.doc_to_target(doc) == doc["answer"] and doc["answer"].startswith("[")
        assert task.sampler.df == []
        if metric == "exact_match":
            assert _generated(task, doc, doc["answer"])["exact_match"] == 1.0
            assert _generated(task, doc, doc["answer"][1:-1])["exact_match"] == 0.0


def test_registered_skill_trains_on_the_training_half_only(catalog, tmp_path):
    data = write_rows(tmp_path / "succ.jsonl", successor_rows(300))
    skill_id, suite, heldout = register(catalog, data, seed=3, metric="number")
    assert suite.startswith(str(catalog.settings.home / SUITES_DIR / "successor"))
    assert {k: heldout[k] for k in ("seed", "n_train", "n_test", "metric")} == {
        "seed": 3, "n_train": 240, "n_test": 60, "metric": "number"}
    test = {json.loads(line)["prompt"]
            for line in catalog.blobs.get_bytes(heldout["test_sha256"]).decode().splitlines()}
    with catalog.session() as s:
        skill = s.get(Skill, skill_id)
        train, val = skill_rows(catalog.blobs, skill)
        assert len(train) + len(val) == 240 and val
        assert not test & {r["prompt"] for r in train + val}
        assert skill_suite(skill).tasks == ("skillstore_successor",)
    # The same file and seed again is the same skill; another seed is refused by name.
    assert register(catalog, data, seed=3, metric="number")[0] == skill_id
    with pytest.raises(ConfigError, match="already exists"):
        register(catalog, data, seed=4)
    assert len(list((catalog.settings.home / SUITES_DIR / "successor").iterdir())) == 1
    with catalog.session() as s:  # gc keeps both halves: jobs and the suite read them
        report = collect_garbage(s, catalog.blobs, dry_run=True, min_age=timedelta(0))
    assert not {b.digest for b in report.unreferenced} & {heldout["train_sha256"],
                                                         heldout["test_sha256"]}


def test_a_skill_whose_uploaded_data_is_gone_names_the_skill_and_the_fix(catalog, tmp_path):
    """Data stored as a blob with no file recorded (an upload), whose blob was then lost: one
    line naming the skill and how to store the data again, not a TypeError on a None path."""
    data = write_rows(tmp_path / "succ.jsonl", successor_rows(30))
    with catalog.session() as s:
        skill = register_skill_dataset(s, catalog.blobs, name="named", data=data,
                                       suite="named", data_uri="")
        assert len(skill_rows(catalog.blobs, skill)[0]) == 27
        catalog.blobs.local_path(skill.data_sha256).unlink()
        with pytest.raises(DatasetError, match=r"Skill 'named' has no training data: its blob "
                           r"sha256:\w+ is not in the blob store .*`skillstore skill add named "
                           r"--data FILE --suite named`"):
            skill_rows(catalog.blobs, skill)


def test_learn_accepts_a_heldout_skill_and_refuses_a_bare_task_name(catalog, tmp_path):
    data = write_rows(tmp_path / "succ.jsonl", successor_rows(300))
    register(catalog, data)
    with catalog.session() as s:
        register_skill_dataset(s, catalog.blobs, name="named", data=data, suite="named")
        register_base(s, name="b", uri=str(tmp_path), architecture="GPT2LMHeadModel",
                      fingerprint="sha256:" + "0" * 64)
        skill, _ = check_request(s, LearnRequest.build("successor", "b"))
        assert skill.name == "successor"
        with pytest.raises(NotFoundError, match="names no task YAML a job can find"):
            check_request(s, LearnRequest.build("named", "b"))


def test_suite_and_split_options_are_exclusive(catalog, tmp_path):
    data = write_rows(tmp_path / "succ.jsonl", successor_rows(300))
    with pytest.raises(ConfigError, match=r"test_size \(--test-size\) sets the held-out split"):
        register(catalog, data, suite="successor", test_size=60)
