"""Child-process entry of a zoo build: trains the GPT-2 source while the parent trains the target.

``python -m skillstore.zoo.source_worker ZOO_TMP_ROOT THREADS`` reads the recipe as JSON on
stdin and writes JSON lines on stdout: ``{"progress": [stage, fraction]}`` as it goes, then
``{"metrics": {...}}`` or ``{"error": "..."}``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .build import ZooRecipe, _paths, build_source


def main(argv: list[str]) -> int:
    import torch

    root, threads = Path(argv[0]), int(argv[1])
    torch.set_num_threads(threads)
    out = sys.stdout
    sys.stdout = sys.stderr  # library prints must not corrupt the JSON lines
    last = [-1.0]

    def emit(doc: dict) -> None:
        out.write(json.dumps(doc) + "\n")
        out.flush()

    def progress(stage: str, fraction: float) -> None:
        if fraction - last[0] >= 0.01 or fraction >= 1.0:
            last[0] = fraction
            emit({"progress": [stage, fraction]})

    try:
        recipe = ZooRecipe.model_validate_json(sys.stdin.read())
        metrics = build_source(recipe, _paths(root), "gpt2", progress)
    except Exception as exc:  # reported to the parent, which raises it with this message
        emit({"error": f"{type(exc).__name__}: {exc}"})
        return 1
    emit({"metrics": metrics})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
