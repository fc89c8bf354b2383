"""The experiment report's heterogeneous fusion table: for each skill a graft run distilled from
several sources, every single-source pack and every fused variant (routed, TIES, task
arithmetic) on that skill's suite, as mean ± 95% t-interval over seeds, with bytes, and each
fused variant against the first source's pack, paired prompt by prompt.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..catalog.models import ExperimentRun
from ..evaluation.stats import mean_interval, paired_bootstrap

BOOTSTRAP_ITERATIONS = 2000


def _label(variant: str, sources: Sequence[str]) -> str:
    return f"{variant} pack" if variant in sources else variant


def _paired(runs: list[dict], variant: str, reference: str) -> dict | None:
    """``variant`` - ``reference`` over every prompt of every seed (the same prompts: one eval
    suite at one limit); the paired bootstrap's 95% interval of the mean difference."""
    before, after = [], []
    for f in runs:
        a, b = f["variants"][reference].get("samples"), f["variants"][variant].get("samples")
        if not a or not b:
            continue
        for doc in a.keys() & b.keys():
            before.append(a[doc])
            after.append(b[doc])
    if len(before) < 2:
        return None
    boot = paired_bootstrap(before, after, iterations=BOOTSTRAP_ITERATIONS)
    return {"n_pairs": len(before), "difference": round(boot.difference, 4),
            "low": round(boot.low, 4), "high": round(boot.high, 4)}


def fusion_table(groups: dict[str, list[ExperimentRun]]) -> list[dict]:
    """One entry per (graft group, fused skill): per variant the score's mean and interval over
    seeds, the prompts per seed, the bytes (mean over seeds) and the paired difference from the
    first source's pack. [] when no run fused anything."""
    out = []
    for label, runs in groups.items():
        by_skill: dict[str, list[tuple[int, dict]]] = {}
        for run in runs:
            for f in (run.result or {}).get("fusion") or []:
                by_skill.setdefault(f["skill"], []).append((run.seed, f))
        for skill, seeded in by_skill.items():
            fusions = [f for _, f in seeded]
            sources = fusions[0]["sources"]
            rows = []
            for variant in fusions[0]["variants"]:
                got = [f["variants"][variant] for f in fusions if variant in f["variants"]]
                rows.append({
                    "variant": _label(variant, sources),
                    "accuracy": mean_interval([v["score"] for v in got]),
                    "n_prompts": sorted({v["n"] for v in got}),
                    "bytes": mean_interval([v["bytes"] for v in got], None),
                    "vs_first_source": (None if variant == sources[0]
                                        else _paired(fusions, variant, sources[0]))})
            out.append({"method": label, "skill": skill, "sources": sources,
                        "seeds": [s for s, _ in seeded], "variants": rows})
    return out


def _cell(agg: dict, digits: int | None) -> str:
    mean = str(agg["mean"]) if digits is None else f"{agg['mean']:.{digits}f}"
    if agg["half_width"] is None:
        return f"{mean} (n_seeds=1)"
    half = str(agg["half_width"]) if digits is None else f"{agg['half_width']:.{digits}f}"
    return f"{mean} ± {half}"


def _diff(d: dict | None) -> str:
    if d is None:
        return "—"
    return f"{d['difference']:+.4f} [{d['low']:.4f}, {d['high']:.4f}] (n={d['n_pairs']})"


def fusion_sections(table: list[dict]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(heading, header, rows) of each fusion table, for the Markdown and HTML formats."""
    return [(f"Heterogeneous fusion: {t['skill']} from {', '.join(t['sources'])} "
             f"({t['method']}; accuracy on {t['skill']}'s suite, mean ± 95% t-interval over "
             f"seeds {', '.join(map(str, t['seeds']))}; difference from the {t['sources'][0]} "
             "pack: paired over prompts x seeds, paired bootstrap 95% interval)",
             ["variant", "accuracy", "prompts per seed", "bytes",
              f"minus {t['sources'][0]} pack"],
             [[v["variant"], _cell(v["accuracy"], 4), ", ".join(map(str, v["n_prompts"])),
               _cell(v["bytes"], None), _diff(v["vs_first_source"])] for v in t["variants"]])
            for t in table]
