"""lm-eval task YAML for a skill: generate_until with exact match over local JSONL files."""

from __future__ import annotations

import json
from pathlib import Path

#: Bump when the task definition changes, so cached evaluation results are not reused.
TASK_VERSION = 1
MAX_GEN_TOKS = 16


def task_yaml_text(task: str, data_files: dict[str, Path]) -> str:
    """The YAML of one lm-eval task reading the given split files through ``dataset_path: json``.

    Values are written as JSON scalars (valid YAML) so paths and the newline stop string
    survive any quoting.
    """
    q = json.dumps
    lines = [
        f"task: {task}",
        "dataset_path: json",
        "dataset_kwargs:",
        "  data_files:",
        *(f"    {split}: {q(str(Path(path).absolute()))}" for split, path in data_files.items()),
    ]
    if "train" in data_files:
        lines.append("training_split: train")
    if "validation" in data_files:
        lines.append("validation_split: validation")
    lines += [
        f"test_split: {'test' if 'test' in data_files else next(iter(data_files))}",
        "output_type: generate_until",
        "num_fewshot: 0",
        'doc_to_text: "{{prompt}}"',
        'doc_to_target: "{{answer}}"',
        'target_delimiter: ""',
        "generation_kwargs:",
        f"  until: [{q(chr(10))}]",
        "  do_sample: false",
        f"  max_gen_toks: {MAX_GEN_TOKS}",
        "metric_list:",
        "  - metric: exact_match",
        "    aggregation: mean",
        "    higher_is_better: true",
        "metadata:",
        f"  version: {TASK_VERSION}.0",
    ]
    return "\n".join(lines) + "\n"


def write_task_yaml(tasks_dir: str | Path, task: str, data_files: dict[str, Path]) -> Path:
    """Write ``<tasks_dir>/<task>.yaml``; lm-eval finds it with
    ``TaskManager(include_path=tasks_dir)``."""
    out = Path(tasks_dir) / f"{task}.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(task_yaml_text(task, data_files), encoding="utf-8")
    return out
