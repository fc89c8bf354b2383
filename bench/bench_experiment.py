"""One experiment as a user queues it, `skillstore experiment run` on a real worker, and what
the queue costs: each run's method seconds against the experiment's wall clock
(`skillstore.experiments.overhead`: time in the tasks beyond the methods, plus time when no run
was running).

Three zoo skills, one seed, naive_ft, graft (compact, tag routing) and multi_lora (one sweep
point), 300 SFT steps a stage, 100 test prompts a skill, one worker process on the embedded
broker (SQLite catalog and queue).

    python -m bench experiment     # writes bench/out/experiment.json and experiment.md
"""

from __future__ import annotations

import json
import tempfile
from datetime import datetime
from pathlib import Path

from .cli import run_experiment, skillstore

SKILLS = ("reverse", "case", "knowledge")
SPEC = {
    "name": "bench-overhead", "base": "tiny-llama",
    "skills": [{"name": s} for s in SKILLS],
    "methods": {"naive_ft": None, "graft": {"policy": "compact", "router": "tag"},
                "multi_lora": {"ranks": [8], "lrs": [3e-3]}},
    "seeds": [0], "eval_limit": 100,
    "train": {"max_steps": 300, "batch_size": 32, "lr": 3e-3, "eval_every": 100},
}


def _log(msg: str) -> None:
    print(f"[experiment] {msg}", flush=True)


def _when(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def run(out: Path) -> dict:
    from skillstore.experiments.overhead import orchestration

    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "spec.yaml"
        spec.write_text(json.dumps(SPEC))  # JSON is YAML
        env, exp, work = run_experiment(spec, list(SKILLS), log=_log)
    doc = json.loads(skillstore(env, "experiment", "show", str(exp), "--json"))
    runs = [(_when(r["started_at"]), _when(r["finished_at"]), r["result"]) for r in doc["runs"]]
    cost = orchestration(_when(doc["created_at"]), _when(doc["finished_at"]), runs)
    if cost is None:
        raise RuntimeError(f"experiment {exp} is {doc['status']}; worker log: {work}/worker.log")
    result = {"experiment": exp, "status": doc["status"], "spec": SPEC, **cost,
              "runs": [{"method": r["method"], "status": r["status"],
                        "seconds": (r["result"] or {}).get("seconds"),
                        "span_s": (_when(r["finished_at"]) - _when(r["started_at"])
                                   ).total_seconds() if r["finished_at"] else None}
                       for r in doc["runs"]]}
    (out / "experiment.json").write_text(json.dumps(result, indent=2))
    (out / "experiment.md").write_text(skillstore(env, "experiment", "report", str(exp)))
    _log(f"{cost['runs']} runs: method seconds {cost['work_s']:.1f}, wall {cost['wall_s']:.1f}, "
         f"in-task {cost['in_task_s']:.1f}, idle {cost['idle_s']:.1f}: overhead "
         f"{cost['overhead_s']:.1f} s = {100 * cost['ratio']:.2f}% of the runs' method seconds")
    for r in result["runs"]:
        _log(f"  {r['method']}: {r['status']}, method {r['seconds']} s, task span {r['span_s']} s")
    return result
