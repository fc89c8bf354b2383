"""Five skills given only as JSONL files, learned one job at a time on a user's own base, each
through the gate, as a user runs them: the `skillstore` CLI and a real worker.

The base is the zoo's target registered with `base add` (so its general suite is the
behaviour suite self-sampled from it). The skills are three curriculum skills' training rows
(reverse, sort, case; every template, openers included) and two of our own ("first letter of
{word}:", and "how many letters in {word}?" scored as a number). After the fifth job the
head's report gives the behaviour suite's agreement with the base, its drop against the base
with a paired interval, the accuracy matrix, BWT and the router's held-out accuracy.

    python -m bench userbase       # writes bench/out/userbase.json; about 20 minutes on 2 cores
"""

from __future__ import annotations

import json
import os
import random
import string
import subprocess
import sys
import tempfile
from pathlib import Path

from .cli import skillstore

ROWS = 4000  # a fifth held out: 792 test prompts, the default split
SKILLS = ("reverse", "sort", "case", "first", "length")
TRAIN = ("--max-steps", "600", "--batch-size", "32", "--lr", "3e-3")
BASE = "user-llama"


def _log(msg: str) -> None:
    print(f"[userbase] {msg}", flush=True)


def _word(rng: random.Random) -> str:
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 9)))


def _own_rows(name: str, seed: int) -> list[dict]:
    rng, rows, seen = random.Random(f"{seed}:{name}"), [], set()
    while len(rows) < ROWS:
        w = _word(rng)
        if w in seen:
            continue
        seen.add(w)
        rows.append({"prompt": f"first letter of {w}:", "answer": w[0]} if name == "first"
                    else {"prompt": f"how many letters in {w}?", "answer": str(len(w))})
    return rows


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps({"prompt": r["prompt"], "answer": r["answer"]}) + "\n"
                            for r in rows))
    return path


def run(out: Path) -> dict:
    from skillstore.curriculum.validate import load_rows
    from skillstore.zoo import build_zoo

    zoo = build_zoo()
    cur = zoo.load_curriculum()
    work = Path(tempfile.mkdtemp(prefix="bench-userbase-"))
    env = {**os.environ, "SKILLSTORE_HOME": str(work / "home"), "TQDM_DISABLE": "1"}
    skillstore(env, "init")
    _log(f"workspace {work}; base add {BASE} (self-sampled behaviour suite)")
    skillstore(env, "base", "add", BASE, str(zoo.target))
    for name in SKILLS:
        if name in cur.skills:
            data = _write(work / f"{name}.jsonl", load_rows(cur.skills[name].train)[:ROWS])
        else:
            data = _write(work / f"{name}.jsonl", _own_rows(name, 0))
        metric = ("--metric", "number") if name == "length" else ()
        skillstore(env, "skill", "add", name, "--data", str(data), *metric)
    log = open(work / "worker.log", "w")  # noqa: SIM115 - closed in finally
    worker = subprocess.Popen([sys.executable, "-m", "skillstore.cli", "worker",
                               "--concurrency", "1"], env=env, stdout=log, stderr=log)
    verdicts = {}
    try:
        for name in SKILLS:
            job = skillstore(env, "learn", name, "--base", BASE, *TRAIN).strip()
            _log(f"job {job}: {name}")
            subprocess.run([sys.executable, "-m", "skillstore.cli", "job", "wait", job],
                           env=env, capture_output=True, check=False)
            shown = json.loads(skillstore(env, "job", "show", job, "--json"))
            pack = shown.get("pack_id")
            status = (json.loads(skillstore(env, "pack", "show", str(pack), "--json"))["status"]
                      if pack else shown.get("status"))
            verdicts[name] = status
            _log(f"job {job}: {name} -> {status}")
    finally:
        worker.terminate()
        worker.wait(timeout=60)
        log.close()
    promoted = json.loads(skillstore(env, "pack", "list", "--status", "promoted", "--json"))
    promoted = promoted if isinstance(promoted, list) else promoted.get("items", [])
    if not promoted:
        raise RuntimeError(f"no pack was promoted ({verdicts}); worker log: {work}/worker.log")
    newest = max(p["id"] for p in promoted)  # its state is the head: promotions only extend it
    report = json.loads(skillstore(env, "report", "--pack", str(newest), "--format", "json"))
    head = report["state"]
    general = [d for d in report["deltas"] if d["suite"] == "general"]
    result = {"workspace": str(work), "zoo": str(zoo.root), "verdicts": verdicts,
              "head_state": head["id"], "skills": report["skills"],
              "accuracy_matrix": report["accuracy_matrix"], "bwt": report["bwt"],
              "forgetting": report["forgetting"], "general": report["general"],
              "general_delta": general[0] if general else None,
              "router": {k: report["router"].get(k) for k in ("accuracy", "interval", "n")}
              if report.get("router") else None}
    (out / "userbase.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"verdicts: {verdicts}")
    print(f"behaviour agreement with the base, by stage: {report['general']}")
    if general:
        g = general[0]
        print(f"last stage's behaviour change {g['delta']:+.3f} [{g['ci_low']:+.3f}, "
              f"{g['ci_high']:+.3f}] (n={g['n']})")
    print(f"BWT {report['bwt']}, forgetting {report['forgetting']}; router {result['router']}")
    return result
