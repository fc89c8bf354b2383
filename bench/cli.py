"""The `skillstore` CLI as a bench drives it: a child process per command, as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def skillstore(env: dict, *args: str) -> str:
    """Run `skillstore ARGS` under ``env`` and return its stdout; a failure raises with the
    command and the end of its stderr."""
    done = subprocess.run([sys.executable, "-m", "skillstore.cli", *args], env=env,
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"skillstore {' '.join(args)} failed: {done.stderr.strip()[-400:]}")
    return done.stdout


def run_experiment(spec: str | Path, skills: list[str], *, concurrency: int = 1,
                   log=print) -> tuple[dict, int, Path]:
    """Queue ``spec`` (a file or a built-in name) as a user does, in a new workspace with the
    zoo registered (``skills`` of its curriculum), on one real worker of ``concurrency`` pool
    processes on the embedded broker; wait for every run. Returns (env, experiment id, the
    workspace folder, which keeps the worker's log)."""
    from skillstore.catalog import init_workspace
    from skillstore.settings import Settings
    from skillstore.zoo import build_zoo
    from skillstore.zoo.register import register_zoo

    zoo = build_zoo()
    work = Path(tempfile.mkdtemp(prefix="experiment-"))
    env = {**os.environ, "SKILLSTORE_HOME": str(work / "home"), "TQDM_DISABLE": "1"}
    cat = init_workspace(Settings(home=work / "home"))
    with cat.session() as s:
        register_zoo(s, cat.blobs, zoo, skills=list(skills))
    cat.close()
    log_file = open(work / "worker.log", "w")  # noqa: SIM115 - closed in finally
    worker = subprocess.Popen([sys.executable, "-m", "skillstore.cli", "worker",
                               "--concurrency", str(concurrency)],
                              env=env, stdout=log_file, stderr=log_file)
    try:
        exp = json.loads(skillstore(env, "experiment", "run", str(spec), "--json"))["id"]
        log(f"workspace {work}; experiment {exp} queued from {spec}")
        subprocess.run([sys.executable, "-m", "skillstore.cli", "experiment", "wait", str(exp)],
                       env=env, check=False)
    finally:
        worker.terminate()
        worker.wait(timeout=60)
        log_file.close()
    return env, exp, work
