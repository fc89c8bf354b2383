"""The `skillstore` CLI as a bench drives it: a child process per command, as a user runs it."""

from __future__ import annotations

import subprocess
import sys


def skillstore(env: dict, *args: str) -> str:
    """Run `skillstore ARGS` under ``env`` and return its stdout; a failure raises with the
    command and the end of its stderr."""
    done = subprocess.run([sys.executable, "-m", "skillstore.cli", *args], env=env,
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"skillstore {' '.join(args)} failed: {done.stderr.strip()[-400:]}")
    return done.stdout
