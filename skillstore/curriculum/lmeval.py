"""lm-eval task YAML for a skill over local JSONL files: exact match, a number or a likelihood."""

from __future__ import annotations

import json
from pathlib import Path

#: Bump when the task definition changes, so cached evaluation results are not reused.
#: 2: prompt and answer read as columns, not through a Jinja template (see ZERO_SHOT).
TASK_VERSION = 2
#: The lines every skillstore task starts its scoring with. Prompt and answer are named as
#: columns, which lm-eval returns as they are. A "{{answer}}" template was rendered, and
#: lm-eval then turned a target that looked like a list ("[1, 2]") into a Python list, which
#: no generated text can equal: such a skill could never score. Rendering also compiled the
#: template again for every document. The empty few-shot pool keeps lm-eval from reading the
#: whole training split into a sampler that a 0-shot task never draws from.
ZERO_SHOT = ["num_fewshot: 0", "fewshot_config:", "  samples: []", "doc_to_text: prompt",
             'target_delimiter: ""']
MAX_GEN_TOKS = 16
#: How a task scores an answer (`skillstore skill add --metric`): the generated text equal to
#: the answer; the first number in the generated text equal to the first in the answer (the
#: test rows carry it as ``number``); or the answer as the model's greedy continuation, from
#: its log-likelihood (lm-eval's ``acc``).
METRICS = ("exact_match", "number", "loglikelihood")
#: The number a ``number`` task compares: the first match, in the answer and in the output.
NUMBER_PATTERN = r"-?\d+(?:[.,]\d+)*"


def _generation(q, max_gen_toks: int, target: str = "answer") -> list[str]:
    return [
        "output_type: generate_until",
        *ZERO_SHOT,
        f"doc_to_target: {target}",
        "generation_kwargs:",
        f"  until: [{q(chr(10))}]",
        "  do_sample: false",
        f"  max_gen_toks: {max_gen_toks}",
    ]


def _scoring(metric: str, q, max_gen_toks: int) -> list[str]:
    if metric == "exact_match":
        return [*_generation(q, max_gen_toks), "metric_list:", "  - metric: exact_match"]
    if metric == "number":
        # The pipeline is named "none" on purpose: its scores then read as plain `exact_match`,
        # the headline metric every suite reports (skillstore.evaluation.scores).
        return [*_generation(q, max_gen_toks, target="number"), "filter_list:",
                "  - name: none", "    filter:", "      - function: regex",
                f"        regex_pattern: {q(NUMBER_PATTERN)}",
                "        group_select: 0", "      - function: take_first",
                "metric_list:", "  - metric: exact_match"]
    if metric == "loglikelihood":
        return ["output_type: loglikelihood", *ZERO_SHOT, "doc_to_target: answer",
                "metric_list:", "  - metric: acc"]
    raise ValueError(f"Unknown task metric {metric!r}; use one of {', '.join(METRICS)}.")


def task_yaml_text(task: str, data_files: dict[str, Path], metric: str = "exact_match",
                   max_gen_toks: int = MAX_GEN_TOKS) -> str:
    """The YAML of one lm-eval task reading the given split files through ``dataset_path: json``,
    scored by ``metric`` (one of METRICS), generating at most ``max_gen_toks`` tokens.

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
        *_scoring(metric, q, max_gen_toks),
        "    aggregation: mean",
        "    higher_is_better: true",
        "metadata:",
        f"  version: {TASK_VERSION}.0",
    ]
    return "\n".join(lines) + "\n"


def write_task_yaml(tasks_dir: str | Path, task: str, data_files: dict[str, Path],
                    metric: str = "exact_match", max_gen_toks: int = MAX_GEN_TOKS) -> Path:
    """Write ``<tasks_dir>/<task>.yaml``; lm-eval finds it with
    ``TaskManager(include_path=tasks_dir)``."""
    out = Path(tasks_dir) / f"{task}.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(task_yaml_text(task, data_files, metric, max_gen_toks), encoding="utf-8")
    return out
