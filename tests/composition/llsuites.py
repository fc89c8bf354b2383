"""Two tiny skills and one loglikelihood lm-eval task each: the smallest suites on which the
baselines and the experiment methods can be scored the way routed states are."""

from __future__ import annotations

import json
from pathlib import Path

from skillstore.evaluation.cache import Suite

from .test_eval_cache import LL_YAML

ROWS = {"alpha": [{"prompt": f"copy {w}: ", "answer": w} for w in ("ab", "cd", "ef", "gh")],
        "beta": [{"prompt": f"flip {w}: ", "answer": w[::-1]} for w in ("ab", "cd", "ef")]}


def write_ll_suites(root: Path) -> list[Suite]:
    """One loglikelihood task per skill of ``ROWS`` under ``root`` (acc is a fraction even for
    an untrained model)."""
    out = []
    for name, rows in ROWS.items():
        data = root / name / "test.jsonl"
        data.parent.mkdir(parents=True)
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        (root / name / f"t_{name}.yaml").write_text(
            LL_YAML.format(data=data).replace("task: t_ll", f"task: t_{name}"))
        out.append(Suite(name, root / name, (f"t_{name}",), headline_metric="acc"))
    return out
