"""Run lm-eval tasks on an in-memory model and flatten its output into result rows."""

from __future__ import annotations

import hashlib
import logging
import math
import numbers
import re
import statistics
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

from ..errors import EvaluationError, NotFoundError
from .stats import proportion_stderr

TASK_LINE = re.compile(r"^task:\s*(\S+)\s*$", re.MULTILINE)
DATA_PATH = re.compile(r"[\"\']?(/[^\"\'\n]+\.jsonl?)[\"\']?")


@dataclass(frozen=True)
class TaskResult:
    """One metric of one lm-eval task: value, stderr (None when unknown) and n.

    ``samples`` maps each doc id (as a string) to its score when the metric is a mean over
    samples (exact_match, acc); None for other aggregations (perplexity).
    """

    task: str
    metric: str
    value: float
    stderr: float | None
    n: int
    samples: dict[str, float] | None = None


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


def per_sample(logged: Sequence[dict], metric: str, filt: str,
               value: float) -> dict[str, float] | None:
    """doc id -> score of ``metric`` under filter ``filt`` from lm-eval's logged samples; None
    unless every score is a number and their mean is the reported value (a mean metric)."""
    out: dict[str, float] = {}
    for sample in logged:
        if sample.get("filter", "none") != filt:
            continue
        score = sample.get(metric)
        if not isinstance(score, numbers.Real):
            return None
        out[str(sample["doc_id"])] = float(score)
    if not out or not math.isclose(math.fsum(out.values()) / len(out), value,
                                   rel_tol=1e-9, abs_tol=1e-9):
        return None
    return out


def sample_stderr(samples: dict[str, float]) -> float | None:
    """Standard error of a mean metric from its per-sample scores: binomial for 0/1 scores
    (positive whenever 0 < p < 1), else the sample standard deviation / sqrt(n)."""
    values = list(samples.values())
    n = len(values)
    if all(v in (0.0, 1.0) for v in values):
        return proportion_stderr(sum(values) / n, n)
    return statistics.stdev(values) / math.sqrt(n) if n > 1 else None


def _rows(results: dict, tasks: Sequence[str]) -> list[TaskResult]:
    rows: list[TaskResult] = []
    counts, logged = results.get("n-samples", {}), results.get("samples") or {}
    for task in tasks:
        block = results["results"].get(task)
        if block is None:
            raise EvaluationError(f"lm-eval returned no result for task {task!r}; check its YAML.")
        n = int(counts.get(task, {}).get("effective", 0))
        for key, value in sorted(block.items()):
            if key == "alias" or "," not in key or "_stderr," in key:
                continue
            metric, filt = key.split(",", 1)
            if not isinstance(value, int | float):
                continue
            samples = per_sample(logged.get(task, ()), metric, filt, float(value))
            if samples is not None:
                stderr = sample_stderr(samples)
            else:
                stderr = block.get(f"{metric}_stderr,{filt}")
                stderr = float(stderr) if isinstance(stderr, int | float) else None
            name = metric if filt == "none" else f"{metric},{filt}"
            rows.append(TaskResult(task, name, float(value), stderr, n, samples))
    return rows


@contextmanager
def _environment_report(evaluator, keep: bool):
    """``simple_evaluate`` ends by describing the environment: torch's ``collect_env`` (pip,
    conda and GPU probes in subprocesses: 4.3 s on a process's first evaluation here and
    0.4 s on each after) and ``git describe`` in the working folder, which prints git's
    ``fatal: not a git repository`` outside a checkout. Nothing here reads those fields, and
    an experiment evaluates hundreds of times, so unless ``keep`` they are left out."""
    if keep:
        yield
        return
    saved = evaluator.add_env_info, evaluator.get_git_commit_hash
    evaluator.add_env_info, evaluator.get_git_commit_hash = (lambda storage: None), (lambda: None)
    try:
        yield
    finally:
        evaluator.add_env_info, evaluator.get_git_commit_hash = saved


def run_tasks(model, tokenizer, tasks: Sequence[str], *, include_path: str | Path,
              batch_size: int = 16, limit: int | None = None,
              samples: dict[str, list[int]] | None = None,
              describe_environment: bool = False) -> list[TaskResult]:
    """``simple_evaluate`` on ``model`` as it is in memory (grafted, routed or plain).

    ``samples`` (task -> doc indices, instead of ``limit``) runs only those docs; their
    per-sample scores keep the true doc ids.

    Only the suite folder is indexed (``include_defaults=False``): no network and no scan of
    lm-eval's thousands of bundled tasks. lm-eval's description of the environment is left
    out unless ``describe_environment`` (``_environment_report``).
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
    # Per-sample scores give every mean metric its stderr (sample_stderr) and the gate its
    # paired tests; lm-eval's bootstrap would only add stderrs of other aggregations.
    with _environment_report(evaluator, describe_environment):
        results = evaluator.simple_evaluate(
            model=lm, tasks=list(tasks), task_manager=manager, limit=limit,
            samples={t: sorted(d) for t, d in samples.items()} if samples else None,
            log_samples=True, bootstrap_iters=0, verbosity="ERROR",
        )
    if results is None:
        raise EvaluationError("lm-eval returned nothing (non-zero rank?); "
                              "run evaluation in the main process.")
    return _rows(results, tasks)
