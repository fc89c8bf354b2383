"""`python -m bench [NAME...]`: run every bench/bench_*.py (or the named ones) in order."""

from __future__ import annotations

import importlib
import pkgutil
import sys
import time
from pathlib import Path

import bench

OUT = Path(__file__).resolve().parent / "out"


def available() -> list[str]:
    return sorted(m.name.removeprefix("bench_") for m in pkgutil.iter_modules(bench.__path__)
                  if m.name.startswith("bench_"))


def main(argv: list[str]) -> int:
    names = available()
    wanted = argv or names
    unknown = [n for n in wanted if n not in names]
    if unknown:
        print(f"unknown benchmark(s) {', '.join(unknown)}; available: {', '.join(names)}",
              file=sys.stderr)
        return 2
    OUT.mkdir(exist_ok=True)
    for name in wanted:
        print(f"\n== bench {name} ==", flush=True)
        started = time.perf_counter()
        importlib.import_module(f"bench.bench_{name}").run(OUT)
        print(f"(bench {name} took {time.perf_counter() - started:.1f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
