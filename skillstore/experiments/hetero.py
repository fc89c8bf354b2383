"""Heterogeneous fusion in a `graft` run: a skill distilled from several sources gets one pack
per source, and the packs are fused by learned routing, TIES and task arithmetic (the
`states.fusion` methods `skillstore state fuse` uses); each single-source pack and each fused
variant is scored alone on the base, on that skill's suite, on the same prompts.

- a source's pack: the pack on the base, nothing else (router ``none``);
- ``routed``: every source's pack in the DeltaBank behind a learned router (`routed_scores`)
  whose classes are the packs, each trained on the prompts its source answered correctly
  (the general suite's prompts as NONE_CLASS), ``top_k`` from the spec's graft settings;
- ``ties`` and ``task_arithmetic``: the packs' decoded deltas merged tensor by tensor by
  `states.fusion.merged_deltas` into one dense fp16 pack (`write_fused_pack`, stored as a blob),
  then scored as a single pack. TIES takes every pack at scale 1 (its disjoint mean averages
  them); task arithmetic takes each at 1/n, so the sum is the packs' mean times ``scale``.
  ``scale`` and ``density`` are the spec's `ties` / `task_arithmetic` settings when it names
  those methods, else their defaults.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..evaluation.cache import Suite
from ..evaluation.scores import Score
from ..packs import read_pack
from ..routing import PackDeltas
from ..states.fusion import TaskArithmetic, merged_deltas, write_fused_pack
from ..training.baselines import Stage
from .baselines import merge_method, routed_scores
from .distilled import Taught
from .spec import ExperimentSpec, Merge

ROUTED = "routed"
MERGED = ("ties", "task_arithmetic")
VARIANTS = (ROUTED, *MERGED)  # after one entry per source


def merges(spec: ExperimentSpec, n: int) -> dict[str, tuple[object, list[float]]]:
    """fusion method and per-pack scales of each merged variant, from the spec's settings: a
    fixed ``scale`` where the spec gives one, else 1 (the packs of one skill are averaged, so
    nothing to sweep, unlike the merge methods' sums over several skills)."""
    chosen = spec.methods.chosen()
    settings = chosen.get("ties") or Merge()
    ties, _ = merge_method("ties", settings, settings.scale or 1.0)
    scale = getattr(chosen.get("task_arithmetic"), "scale", None) or 1.0
    return {"ties": (ties, [1.0] * n),
            "task_arithmetic": (TaskArithmetic(lam=scale), [1.0 / n] * n)}


def _record(score: Score, nbytes: int, **extra) -> dict:
    return {"score": score.value, "n": score.n, "bytes": nbytes,
            "samples": dict(sorted(score.samples.items())) if score.samples else None, **extra}


def fusion_scores(model, tokenizer, packs: Sequence, taught: Sequence[Taught], suite: Suite,
                  spec: ExperimentSpec, store, work: Path, *, general: Sequence[str] = (),
                  seed: int, top_k: int = 1, limit: int | None = None) -> dict:
    """Each source's pack (``packs``, `graft.StagePack`s in ``taught``'s order) and each fused
    variant scored on ``suite``: the run's ``fusion`` record for one skill. ``model`` holds the
    plain base before and after."""
    skill = taught[0].stage.name
    stage = [taught[0].stage]
    variants: dict[str, dict] = {}
    for pack, t in zip(packs, taught, strict=True):
        row, _ = routed_scores(model, tokenizer, [pack.deltas], stage, [suite], seed=seed,
                               router="none", limit=limit)
        variants[t.source] = _record(row[0], pack.bytes, digest=pack.digest)
    # Routed: the packs stay apart; the router learns which source's pack an input goes to.
    named = [PackDeltas(f"{skill}@{t.source}", p.deltas.parts)
             for p, t in zip(packs, taught, strict=True)]
    classes = [Stage(n.name, t.stage.train, t.stage.validation, [])
               for n, t in zip(named, taught, strict=True)]
    row, router = routed_scores(model, tokenizer, named, classes, [suite], general=general,
                                seed=seed, router="learned", top_k=top_k, limit=limit)
    router = {k: v for k, v in router.items() if k not in ("test_accuracy", "test_n")}
    variants[ROUTED] = _record(row[0], sum(p.bytes for p in packs), router=router)
    files = [read_pack(store.local_path(p.digest)) for p in packs]
    work.mkdir(parents=True, exist_ok=True)
    for name, (fusion, scales) in merges(spec, len(packs)).items():
        path = work / f"fused-{name}.safetensors"
        size = write_fused_pack(path, files, merged_deltas(files, scales, fusion), fusion.name)
        fused = read_pack(path)
        deltas = PackDeltas(skill, {p.name: p for p in fused.decoded()})
        row, _ = routed_scores(model, tokenizer, [deltas], stage, [suite], seed=seed,
                               router="none", limit=limit)
        variants[name] = _record(row[0], size, digest=store.put_file(path),
                                 scales=scales, lam=fusion.lam,
                                 density=getattr(fusion, "density", None))
    return {"skill": skill, "sources": [t.source for t in taught], "limit": limit,
            "variants": variants}
