"""A plain JSONL's held-out test split, and the lm-eval task that measures a skill on it."""

from __future__ import annotations

import hashlib
import json
import random
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

from .atomic import publish_dir
from .curriculum.lmeval import (
    MAX_GEN_TOKS,
    METRICS,
    NUMBER_PATTERN,
    TASK_VERSION,
    write_task_yaml,
)
from .curriculum.validate import iter_numbered_rows, write_jsonl
from .errors import DatasetError, unknown_name
from .evaluation.runner import suite_version
from .evaluation.stats import required_n
from .skilldata import rows_bytes

DEFAULT_SEED = 0
DEFAULT_METRIC = "exact_match"
# The default test size is the paired sample that shows a 5-point drop of a skill at 80%
# accuracy (one-sided 95%, power 0.8: 792 prompts), capped at a fifth of the rows so training
# keeps the rest. Below these floors a split is too small to judge or to learn from.
POWER_ACCURACY = 0.8
POWER_MARGIN = 0.05
MAX_TEST_FRACTION = 0.2
MIN_TEST_ROWS = 50
MIN_TRAIN_ROWS = 100
#: The workspace folder (under settings.home) holding one folder per skill's generated suite.
SUITES_DIR = "suites"
TRAIN_FILE, TEST_FILE = "train.jsonl", "test.jsonl"
_NUMBER = re.compile(NUMBER_PATTERN)


@dataclass(frozen=True)
class HeldoutSplit:
    """The rows of a JSONL split in two (each half in file order) and how it was made."""

    train: list[dict]
    test: list[dict]
    seed: int
    metric: str
    duplicates_dropped: int

    def task_rows(self, rows: list[dict]) -> list[dict]:
        """Rows as the task reads them: prompt and answer only (lm-eval loads every split of a
        task with one schema, so a user's extra fields would have to agree across both), and
        for a ``number`` task the answer's first number."""
        if self.metric != "number":
            return [{"prompt": r["prompt"], "answer": r["answer"]} for r in rows]
        return [{"prompt": r["prompt"], "answer": r["answer"],
                 "number": _NUMBER.search(r["answer"]).group(0)} for r in rows]


def default_test_size(n_rows: int) -> int:
    """required_n for a 5-point drop at 80% accuracy, capped at MAX_TEST_FRACTION of the rows."""
    return min(required_n(POWER_ACCURACY, POWER_MARGIN), int(n_rows * MAX_TEST_FRACTION))


@dataclass(frozen=True)
class Wording:
    """How a fix names the options: `skill add`'s flags by default; an experiment spec passes
    its keys."""

    metric: str = "--metric"
    test_size: str = "--test-size"
    own_task: str = "pass --suite with your own task"


FLAGS = Wording()


def _unique_rows(path: Path, say: Wording = FLAGS) -> tuple[list[tuple[int, dict]], int]:
    """(line, row) once per prompt; identical repeats are dropped, another answer is refused."""
    seen: dict[str, tuple[int, dict]] = {}
    dropped = 0
    for line, row in iter_numbered_rows(path):
        first = seen.get(row["prompt"])
        if first is None:
            seen[row["prompt"]] = (line, row)
        elif first[1]["answer"] == row["answer"]:
            dropped += 1
        else:
            raise DatasetError(
                f"{path}:{line}: prompt {row['prompt'][:60]!r} is also on line {first[0]} with "
                "another answer, so it could land in both the training and the test split; "
                f"keep one answer per prompt, or {say.own_task}.")
    return list(seen.values()), dropped


def check_metric(rows: list[tuple[int, dict]], metric: str, path: Path,
                 say: Wording = FLAGS) -> None:
    """Refuse a metric the rows cannot be scored by, naming the first row that does not fit."""
    for line, row in rows:
        if metric != "loglikelihood" and "\n" in row["answer"]:
            raise DatasetError(f"{path}:{line}: answer spans several lines, but generation stops "
                               "at the first newline, so it can never match; join the lines or "
                               f"pick {say.metric} loglikelihood.")
        if metric == "number" and not _NUMBER.search(row["answer"]):
            raise DatasetError(f"{path}:{line}: answer {row['answer'][:60]!r} has no number for "
                               f"{say.metric} number to compare; fix the row or pick "
                               f"{say.metric} exact_match.")
        if metric == "loglikelihood" and not row["answer"]:
            raise DatasetError(f"{path}:{line}: answer is empty, so {say.metric} loglikelihood "
                               f"has nothing to score; fix the row or pick {say.metric} "
                               "exact_match.")


def split_dataset(path: str | Path, *, seed: int = DEFAULT_SEED, test_size: int | None = None,
                  metric: str = DEFAULT_METRIC, say: Wording = FLAGS) -> HeldoutSplit:
    """Hold out ``test_size`` rows (default: default_test_size), picked by a shuffle seeded
    with ``seed``; no prompt is in both halves. DatasetError names the file when it is too
    small for a split of at least MIN_TEST_ROWS test and MIN_TRAIN_ROWS training rows."""
    if metric not in METRICS:
        raise unknown_name("metric", metric, METRICS)
    path = Path(path)
    rows, dropped = _unique_rows(path, say)
    check_metric(rows, metric, path, say)
    size = default_test_size(len(rows)) if test_size is None else test_size
    n = len(rows)
    if size < MIN_TEST_ROWS or n - size < MIN_TRAIN_ROWS:
        fix = f"add rows (the default split needs {int(MIN_TEST_ROWS / MAX_TEST_FRACTION)})"
        if n >= MIN_TEST_ROWS + MIN_TRAIN_ROWS:
            fix = f"pass {say.test_size} between {MIN_TEST_ROWS} and {n - MIN_TRAIN_ROWS}"
        raise DatasetError(
            f"{path}: {n} distinct prompts split into {size} test and {n - size} training rows "
            f"is too small to judge or learn from (at least {MIN_TEST_ROWS} test and "
            f"{MIN_TRAIN_ROWS} training rows); {fix}, or {say.own_task}.")
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    held = set(order[:size])
    return HeldoutSplit(train=[r for i, (_, r) in enumerate(rows) if i not in held],
                        test=[r for i, (_, r) in enumerate(rows) if i in held],
                        seed=seed, metric=metric, duplicates_dropped=dropped)


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class SuitePlan:
    """Where a split's task goes (content-addressed) and the catalog's record of it."""

    folder: Path
    task: str
    split: HeldoutSplit

    @property
    def yaml_path(self) -> Path:
        return self.folder / f"{self.task}.yaml"

    def record(self) -> dict:
        """What `skills.heldout` holds (suite_version is added once the files exist)."""
        return {"seed": self.split.seed, "n_train": len(self.split.train),
                "n_test": len(self.split.test), "metric": self.split.metric,
                "duplicates_dropped": self.split.duplicates_dropped,
                "train_sha256": _digest(rows_bytes(self.split.train)),
                "test_sha256": _digest(rows_bytes(self.split.test)),
                "task": self.task, "task_version": TASK_VERSION, "suite_hash": self.folder.name}


def plan_suite(suites_dir: str | Path, name: str, split: HeldoutSplit) -> SuitePlan:
    """The folder ``<suites_dir>/<name>/<hash>`` for this split: other data, seed or metric is
    another folder, so registering a skill again never changes a suite already measured."""
    task = f"skillstore_{name}"
    key = json.dumps({"task": task, "task_version": TASK_VERSION, "metric": split.metric,
                      "train": _digest(rows_bytes(split.train)),
                      "test": _digest(rows_bytes(split.test))}, sort_keys=True)
    suite_hash = hashlib.sha256(key.encode()).hexdigest()[:16]
    return SuitePlan(Path(suites_dir).absolute() / name / suite_hash, task, split)


def _max_gen_toks(rows: list[dict]) -> int:
    # A byte-level tokenizer spends at most one token per byte: room for the longest answer.
    return max([MAX_GEN_TOKS, *(len(r["answer"].encode()) + 1 for r in rows)])


def write_suite(store, plan: SuitePlan) -> dict:
    """Store both halves as blobs and publish the task folder (YAML, train and test JSONL);
    returns the record with the suite's version as the eval cache computes it."""
    split = plan.split
    digests = (store.put_bytes(rows_bytes(split.train)),
               store.put_bytes(rows_bytes(split.test)))
    record = plan.record()
    assert digests == (record["train_sha256"], record["test_sha256"])
    if not plan.yaml_path.is_file():
        tmp = plan.folder.with_name(f".tmp-{plan.folder.name}-{uuid.uuid4().hex[:8]}")
        write_jsonl(tmp / TRAIN_FILE, split.task_rows(split.train))
        write_jsonl(tmp / TEST_FILE, split.task_rows(split.test))
        files = {"train": plan.folder / TRAIN_FILE, "test": plan.folder / TEST_FILE}
        write_task_yaml(tmp, plan.task, files, split.metric,
                        max_gen_toks=_max_gen_toks(split.test))
        # A folder already there without its YAML is a broken copy: replace it.
        publish_dir(tmp, plan.folder, replace=plan.folder.is_dir())
    return {**record, "suite_version": suite_version(plan.folder, (plan.task,))}
