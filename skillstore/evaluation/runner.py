"""Run lm-eval tasks on an in-memory model and flatten its output into result rows."""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

from ..errors import EvaluationError, NotFoundError

TASK_LINE = re.compile(r"^task:\s*(\S+)\s*$", re.MULTILINE)
DATA_PATH = re.compile(r"[\"\']?(/[^\"\'\n]+\.jsonl?)[\"\']?")


@dataclass(frozen=True)
class TaskResult:
    """One metric of one lm-eval task: value, stderr (None when lm-eval gives none) and n."""

    task: str
    metric: str
    value: float
    stderr: float | None
    n: int


def yaml_task(path: Path) -> str | None:
    """The task a YAML file defines (its ``task:`` line), or None when it defines none."""
    m = TASK_LINE.search(path.read_text(encoding="utf-8", errors="replace"))
    return m.group(1).strip("'\"") if m else None


def task_files(root: Path) -> dict[str, Path]:
    """task name -> the YAML under ``root`` that defines it."""
    out = {}
    for path in sorted(p for p in root.rglob("*") if p.suffix in (".yaml", ".yml")):
        task = yaml_task(path)
        if task:
            out[task] = path
    return out


def suite_version(include_path: str | Path, tasks: Sequence[str] | None = None) -> str:
    """A digest of the suite's task YAML and the data files they name; editing either changes it.

    With ``tasks`` only those tasks count, so one skill's data does not invalidate another's cache.
    """
    root = Path(include_path)
    if not root.is_dir():
        raise NotFoundError(f"Suite folder {str(root)!r} does not exist; "
                            "pass the folder holding the task YAML.")
    files = task_files(root)
    wanted = sorted(files) if tasks is None else list(tasks)
    h = hashlib.sha256()
    for task in wanted:
        if task not in files:
            raise NotFoundError(f"Task {task!r} has no YAML under {str(root)!r}; "
                                "write it or fix the suite.")
        text = files[task].read_bytes()
        h.update(task.encode() + b"\0" + text)
        for quoted in sorted(set(DATA_PATH.findall(text.decode("utf-8", errors="replace")))):
            data = Path(quoted)
            if data.is_file():
                h.update(quoted.encode() + b"\0" + data.read_bytes())
    return "sha256:" + h.hexdigest()[:32]


def lm_eval_version() -> str:
    return version("lm_eval")


def _rows(results: dict, tasks: Sequence[str]) -> list[TaskResult]:
    rows: list[TaskResult] = []
    samples = results.get("n-samples", {})
    for task in tasks:
        block = results["results"].get(task)
        if block is None:
            raise EvaluationError(f"lm-eval returned no result for task {task!r}; check its YAML.")
        n = int(samples.get(task, {}).get("effective", 0))
        for key, value in sorted(block.items()):
            if key == "alias" or "," not in key or "_stderr," in key:
                continue
            metric, filt = key.split(",", 1)
            if not isinstance(value, int | float):
                continue
            stderr = block.get(f"{metric}_stderr,{filt}")
            stderr = float(stderr) if isinstance(stderr, int | float) else None
            name = metric if filt == "none" else f"{metric},{filt}"
            rows.append(TaskResult(task, name, float(value), stderr, n))
    return rows


def run_tasks(model, tokenizer, tasks: Sequence[str], *, include_path: str | Path,
              batch_size: int = 16, limit: int | None = None) -> list[TaskResult]:
    """``simple_evaluate`` on ``model`` as it is in memory (grafted, routed or plain).

    Only the suite folder is indexed (``include_defaults=False``): no network and no scan of
    lm-eval's thousands of bundled tasks.
    """
    # lm-eval takes seconds to import; only a command that evaluates pays for it.
    from lm_eval import evaluator
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    if not tasks:
        raise EvaluationError("No tasks given; name at least one lm-eval task of the suite.")
    manager = TaskManager(include_path=str(include_path), include_defaults=False)
    missing = [t for t in tasks if t not in manager.all_tasks]
    if missing:
        raise NotFoundError(
            f"Task {missing[0]!r} is not defined under {str(include_path)!r}; "
            f"available: {', '.join(sorted(manager.all_tasks)) or 'none'}."
        )
    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size,
              device=str(next(model.parameters()).device))
    results = evaluator.simple_evaluate(
        model=lm, tasks=list(tasks), task_manager=manager, limit=limit, log_samples=False,
        bootstrap_iters=0 if limit else 1000, verbosity="ERROR",
    )
    if results is None:
        raise EvaluationError("lm-eval returned nothing (non-zero rank?); "
                              "run evaluation in the main process.")
    return _rows(results, tasks)
