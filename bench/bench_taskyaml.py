"""What a skill's task YAML costs each evaluation: the YAML of task version 1 (prompt and
answer as Jinja templates, lm-eval's default few-shot pool over the training split) against
the one `write_task_yaml` writes now (`curriculum.lmeval.ZERO_SHOT`: columns, an empty pool),
interleaved in one process on the same tiny model and the same rows, after one warm-up each.
The rows have the zoo's sizes: 200 test prompts, 8,000 training rows."""

from __future__ import annotations

import json
import os
import random
import statistics
import string
import tempfile
import time
from pathlib import Path

import torch

from bench.bench_cost import _tiny_base
from skillstore.curriculum.lmeval import write_task_yaml
from skillstore.evaluation.runner import run_tasks

ROUNDS = int(os.environ.get("SKILLSTORE_BENCH_TASKYAML_ROUNDS", "5"))
TEST, TRAIN = 200, 8000
TASK = "skillstore_reverse"


def _template_yaml(text: str) -> str:
    """The same task as task version 1 wrote it."""
    return (text.replace("fewshot_config:\n  samples: []\n", "")
            .replace("doc_to_text: prompt", 'doc_to_text: "{{prompt}}"')
            .replace("doc_to_target: answer", 'doc_to_target: "{{answer}}"'))


def _folders(root: Path) -> dict[str, Path]:
    rng = random.Random(7)
    words = ["".join(rng.choices(string.ascii_lowercase, k=5)) for _ in range(TEST + TRAIN)]
    rows = [{"prompt": f"Reverse {w}:", "answer": w[::-1]} for w in words]
    (root / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:TEST]))
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[TEST:]))
    files = {"train": root / "train.jsonl", "test": root / "test.jsonl"}
    columns = write_task_yaml(root / "columns", TASK, files)
    template = root / "template" / columns.name
    template.parent.mkdir()
    template.write_text(_template_yaml(columns.read_text()))
    assert template.read_text() != columns.read_text()
    return {"template (version 1)": template.parent, "columns (now)": columns.parent}


def _timed(model, tok, folder: Path) -> tuple[float, dict]:
    started = time.perf_counter()
    result = run_tasks(model, tok, [TASK], include_path=folder, batch_size=32)[0]
    return time.perf_counter() - started, result.samples


def run(out_dir: Path) -> dict:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model, tok = _tiny_base(root)
        folders = _folders(root)
        answers = {label: _timed(model, tok, f)[1] for label, f in folders.items()}  # warm-up
        if len({json.dumps(a, sort_keys=True) for a in answers.values()}) != 1:
            raise AssertionError("the two task YAMLs scored the same model differently")
        seconds: dict[str, list[float]] = {label: [] for label in folders}
        for _ in range(ROUNDS):
            for label, folder in folders.items():
                seconds[label].append(_timed(model, tok, folder)[0])
    old, new = (statistics.median(s) for s in seconds.values())
    print(f"\nOne lm-eval evaluation of {TEST} docs ({TRAIN:,} training rows beside them; tiny "
          f"Llama, CPU, 1 thread), median of {ROUNDS} interleaved rounds after one warm-up each")
    print(f"{'':22} {'median s':>9} {'min s':>7} {'max s':>7}")
    for label, s in seconds.items():
        print(f"{label:22} {statistics.median(s):>9.3f} {min(s):>7.3f} {max(s):>7.3f}")
    print(f"template / columns: {old / new:.2f}x; {old - new:.3f} s saved an evaluation")
    result = {"rounds": ROUNDS, "docs": TEST, "train_rows": TRAIN, "seconds": seconds,
              "ratio": old / new, "threads": torch.get_num_threads()}
    (out_dir / "taskyaml.json").write_text(json.dumps(result, indent=2))
    return result
