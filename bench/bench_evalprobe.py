"""What lm-eval's environment probes cost each evaluation: `run_tasks` with them
(`describe_environment=True`, lm-eval as it comes) and without (the default), interleaved in
one process on the same tiny model and task, after one warm-up of each."""

from __future__ import annotations

import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench.bench_cost import _skill_files, _tiny_base
from skillstore.evaluation.runner import run_tasks

ROUNDS = int(os.environ.get("SKILLSTORE_BENCH_EVALPROBE_ROUNDS", "5"))


def _timed(model, tok, tasks: Path, describe: bool) -> float:
    started = time.perf_counter()
    run_tasks(model, tok, ["skillstore_first"], include_path=tasks, batch_size=32,
              describe_environment=describe)
    return time.perf_counter() - started


def run(out_dir: Path) -> dict:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model, tok = _tiny_base(root)
        _skill_files(root, "first", random.Random(7), "first letter of")
        for describe in (True, False):  # warm-up: imports, the task's dataset, collect_env's
            _timed(model, tok, root / "tasks", describe)
        seconds = {True: [], False: []}
        for _ in range(ROUNDS):
            for describe in (True, False):
                seconds[describe].append(_timed(model, tok, root / "tasks", describe))
    with_, without = (statistics.median(seconds[d]) for d in (True, False))
    print(f"\nOne lm-eval evaluation of 12 docs (tiny Llama, CPU, 1 thread), median of {ROUNDS} "
          "interleaved rounds after one warm-up each")
    print(f"{'':26} {'median s':>9} {'min s':>7} {'max s':>7}")
    for label, d in (("with lm-eval's probes", True), ("without (default)", False)):
        print(f"{label:26} {statistics.median(seconds[d]):>9.3f} {min(seconds[d]):>7.3f} "
              f"{max(seconds[d]):>7.3f}")
    print(f"with / without: {with_ / without:.2f}x; the probes cost {with_ - without:.3f} s an "
          "evaluation")
    result = {"rounds": ROUNDS, "seconds": {"with": seconds[True], "without": seconds[False]},
              "ratio": with_ / without, "threads": torch.get_num_threads()}
    (out_dir / "evalprobe.json").write_text(json.dumps(result, indent=2))
    return result
