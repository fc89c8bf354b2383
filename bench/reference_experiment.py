"""`make experiment`: the full comparison, the built-in `full` spec (every runnable method,
three seeds), run as a user runs it on one real worker, its report written to `docs/` as the
reference result with the machine, the date, the commit and the wall clock.

    python -m bench.reference_experiment [--concurrency 2] [--out docs/reference-experiment]

Writes OUT.md (the report under a header saying where and when it was measured), OUT.html (the
self-contained report) and OUT.json (the same numbers). Exits 1 unless every run succeeded;
the report is written either way, failed runs shown with their errors.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from .cli import run_experiment, skillstore

ROOT = Path(__file__).resolve().parent.parent
SPEC = "full"


def _log(msg: str) -> None:
    print(f"[experiment] {msg}", flush=True)


def machine() -> str:
    """One line: cores, memory, CPU, accelerator, torch."""
    import psutil
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = (torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")
    return (f"{os.cpu_count()} cores ({cpu}), {psutil.virtual_memory().total / 2**30:.0f} GiB, "
            f"{gpu}; torch {torch.__version__}, Python {platform.python_version()}")


def commit() -> str:
    """HEAD's short hash, with ``+changes`` when tracked files differ from it."""
    done = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True, check=False)
    dirty = subprocess.run(["git", "-C", str(ROOT), "diff", "--quiet", "HEAD", "--"],
                           check=False).returncode == 1
    return (done.stdout.strip() or "unknown") + ("+changes" if dirty else "")


def main(argv: list[str]) -> int:
    from skillstore.experiments.overhead import orchestration
    from skillstore.experiments.spec import load_spec

    parser = argparse.ArgumentParser(prog="python -m bench.reference_experiment",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=os.cpu_count() or 1,
                        help="pool processes of the one worker (default: one per core)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "reference-experiment",
                        help="path without suffix for the .md, .html and .json files")
    args = parser.parse_args(argv)
    spec = load_spec(SPEC)
    # The code the runs ran is the tree's when they are queued, not when the report is written.
    started, when, at = time.monotonic(), datetime.now(UTC), commit()
    env, exp, work = run_experiment(SPEC, [s.name for s in spec.skills],
                                    concurrency=args.concurrency, log=_log)
    wall = time.monotonic() - started
    doc = json.loads(skillstore(env, "experiment", "show", str(exp), "--json"))
    stamp = lambda text: datetime.fromisoformat(text) if text else None  # noqa: E731
    cost = orchestration(stamp(doc["created_at"]), stamp(doc["finished_at"]),
                         [(stamp(r["started_at"]), stamp(r["finished_at"]), r["result"])
                          for r in doc["runs"]])
    failed = [r for r in doc["runs"] if r["status"] != "succeeded"]
    header = (
        f"# Reference experiment: the built-in `{SPEC}` spec\n\n"
        f"Measured {when:%Y-%m-%d} (UTC) at commit `{at}` by `make experiment`, on "
        f"{machine()}: one worker with {args.concurrency} pool processes on the embedded "
        f"broker (SQLite catalog and queue). {len(doc['runs'])} runs "
        f"({len(spec.methods.chosen())} methods x {len(spec.seeds)} seeds), "
        f"{len(failed)} not succeeded; {wall / 60:.1f} min from queueing to the report"
        + (f"; the queue's overhead {100 * cost['ratio']:.2f}% of the runs' method seconds"
           if cost else "") + ".\n\n"
        "The spec is `skillstore/experiments/specs/full.yaml`. A method's figures are means "
        "with 95% Student-t intervals over the three seeds; graft is compared with each "
        "method on the final row, paired by (skill, seed): 9 pairs, so a sign-flip test "
        "cannot go below p = 2/512 = 0.004 before Holm's adjustment.\n\n")
    report = skillstore(env, "experiment", "report", str(exp))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(header + report, encoding="utf-8")
    skillstore(env, "experiment", "report", str(exp), "--format", "html",
               "-o", str(args.out.with_suffix(".html")))
    data = json.loads(skillstore(env, "experiment", "report", str(exp), "--format", "json"))
    args.out.with_suffix(".json").write_text(json.dumps(
        {"measured": when.isoformat(), "commit": at, "machine": machine(),
         "concurrency": args.concurrency, "wall_s": round(wall, 1), "overhead": cost,
         "report": data}, indent=2), encoding="utf-8")
    _log(f"{len(doc['runs'])} runs in {wall / 60:.1f} min, {len(failed)} not succeeded; "
         f"wrote {args.out}.md/.html/.json (workspace {work})")
    for run in failed:
        _log(f"  run {run['id']} {run['method']} seed {run['seed']}: {run['status']} "
             f"{run['error'] or ''}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
