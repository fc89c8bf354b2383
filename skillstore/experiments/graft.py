"""GraftLLM as an experiment run: each skill fine-tuned from the base, its delta compressed into a
SkillPack stored as a blob, and the packs so far routed and scored after every stage.

A pack is made as a learning job makes it (`pipeline.steps.compress`): `compress_checkpoint`
of the fine-tune against the base with the spec's policy (or budget), GPTQ statistics from the
skill's first training rows when the policy asks for them, `tune_pack` when ``tune_steps`` > 0
(toward the rows' answers, or the fine-tune's with ``tune_objective: teacher``),
then `store.put_file`. The fine-tune is the one the merges use (`baselines.finetune_delta`) and
the routed scoring the one `multi_lora` uses (`baselines.routed_scores`). A skill distilled
from several sources gets one pack per source, fused and scored by `hetero.fusion_scores`; the
first listed source's pack is the one the continual matrix routes. `stage_verdicts` judges
each stage's pack with the spec's gate, on the scores the run already has.
"""

from __future__ import annotations

import copy
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..evaluation.cache import Suite, samples_bytes
from ..evaluation.scores import Score
from ..gate.decision import decide
from ..gate.policy import GatePolicy
from ..packs import (
    CompressionPolicy,
    TuneConfig,
    compress_checkpoint,
    load_policy,
    read_pack,
    tune_pack,
)
from ..packs.calibration import CALIBRATION_ROWS, skill_calibration
from ..packs.graft import model_fingerprint
from ..routing import PackDeltas
from ..training.baselines import Stage
from ..training.sft import Progress, SFTConfig
from .baselines import (
    Rows,
    changed_params,
    finetune_delta,
    load_weights,
    routed_scores,
    stage_progress,
    weights_of,
)
from .distilled import Taught
from .hetero import fusion_scores
from .sequential import suite_scores
from .spec import ExperimentSpec, Graft


@dataclass(frozen=True)
class StagePack:
    """One skill's pack as the run made and stored it, and its fine-tune's own score."""

    skill: str
    digest: str
    bytes: int  # the pack file's, as stored
    dense_fp16_bytes: int
    rel_error: float  # the compression's, before any tuning
    changed_params: int  # entries the fine-tune changed: its dense delta
    finetune: Score  # the uncompressed fine-tune on its own skill's suite
    tune: dict | None
    deltas: PackDeltas = field(repr=False)
    dpo: dict | None = None  # the fine-tune's DPO metrics, for a dpo stage
    # The blob of the fine-tune's per-sample scores: `experiment adopt` pairs the pack's state
    # with them for the gate's fidelity check, as a learning job's gate does.
    finetune_samples: str | None = None

    def record(self) -> dict:
        """The pack's lineage and sizes, as the run's result keeps them."""
        return {"skill": self.skill, "digest": self.digest, "bytes": self.bytes,
                "dense_fp16_bytes": self.dense_fp16_bytes, "rel_error": self.rel_error,
                "changed_params": self.changed_params, "tune": self.tune,
                # as gate.reference.finetune_record keeps it on a learning job's pack
                "finetune": {**self.finetune.as_json(), "suite": self.skill,
                             "samples_digest": self.finetune_samples},
                **({"dpo": self.dpo} if self.dpo is not None else {})}


def graft_policy(settings: Graft) -> CompressionPolicy:
    """The spec's policy, in budget mode when it names a budget (percent of the dense fp16
    delta, as `skillstore learn --budget`; the policy takes a fraction)."""
    budget = None if settings.budget is None else settings.budget / 100
    return load_policy(settings.policy, budget=budget)


def policy_label(settings: Graft) -> str:
    """What the report labels a graft run's point with: its policy, and budget when it has one."""
    if settings.budget is None:
        return settings.policy
    return f"{settings.policy} @ {settings.budget:g}%"


def make_pack(model, tokenizer, base: dict, stage: Stage, suite: Suite, settings: Graft,
              config: SFTConfig, store, work: Path, *, base_dir: str, seed: int,
              limit: int | None = None, progress: Progress | None = None) -> StagePack:
    """Fine-tune ``stage`` from ``base``, score the fine-tune on ``suite``, compress it into a
    pack under ``work``, tune it, and put the pack file in ``store``. ``model`` ends holding
    the plain base again (load it with its fingerprint: the pack names its base by it)."""
    delta, dpo = finetune_delta(model, tokenizer, base, stage, config, progress)
    changed = changed_params(delta)
    del delta
    finetune = suite_scores(model, tokenizer, [suite], limit=limit)[0]
    tuned_dir = work / "finetune"
    model.save_pretrained(tuned_dir, safe_serialization=True)
    teacher = (copy.deepcopy(model)
               if settings.tune_steps and settings.tune_objective == "teacher" else None)
    load_weights(model, base)  # GPTQ's statistics and the tuning read the plain base
    policy = graft_policy(settings)
    calibration = (skill_calibration(model, tokenizer, stage.train[:CALIBRATION_ROWS])
                   if policy.gptq else None)
    try:
        summary = compress_checkpoint(base_dir, tuned_dir, policy, work / "pack.safetensors",
                                      base_fingerprint=model_fingerprint(model),
                                      calibration=calibration)
    finally:
        shutil.rmtree(tuned_dir, ignore_errors=True)  # a whole checkpoint: gone at once
    path, tune = summary.path, None
    if settings.tune_steps:
        report = (lambda step, total, _loss: progress("tune", 1.0)) if progress else None
        tuned = tune_pack(path, model, tokenizer, stage.train, work / "tuned.safetensors",
                          TuneConfig(steps=settings.tune_steps, seed=seed), report,
                          teacher=teacher)
        path = tuned.path
        tune = {"steps": tuned.steps, "objective": tuned.objective,
                "loss_before": tuned.loss_before,
                "loss_after": tuned.loss_after, "seconds": round(tuned.seconds, 3)}
    digest = store.put_file(path)  # whole or absent: named by its digest
    samples = store.put_bytes(samples_bytes(finetune.samples)) if finetune.samples else None
    pack = read_pack(path)
    return StagePack(stage.name, digest, path.stat().st_size, summary.dense_fp16_bytes,
                     summary.rel_error, changed, finetune, tune,
                     PackDeltas(stage.name, {p.name: p for p in pack.decoded()}), dpo, samples)


def graft_scores(model, tokenizer, stages: Sequence[Stage], suites: Sequence[Suite],
                 settings: Graft, config: SFTConfig, store, *, base_dir: str,
                 general: Sequence[str] = (), seed: int, limit: int | None = None,
                 teachers: Mapping[str, Sequence[Taught]] | None = None,
                 spec: ExperimentSpec | None = None, progress: Progress | None = None
                 ) -> tuple[Rows, list[StagePack], list[dict], list[dict]]:
    """One pack per stage (`make_pack`), each from ``model``'s weights at the start, and after
    stage i the packs 1..i routed by ``settings.router`` and scored on every suite; returns
    the rows, the packs, each stage's router and the fusion records. A stage that
    ``teachers`` gives several sources for gets one pack per source (the first is routed in the
    matrix) and a fusion record (`hetero.fusion_scores`, with ``spec``'s merge settings)."""
    base, packs, rows, routers, fusions = weights_of(model), [], [], [], []
    teachers = teachers or {}
    with tempfile.TemporaryDirectory(prefix="graft-") as tmp:
        for i, stage in enumerate(stages):
            taught = teachers.get(stage.name, ())
            made = []
            for k, learned in enumerate([t.stage for t in taught] if len(taught) > 1
                                        else [stage]):
                work = Path(tmp, f"{i}-{k}")
                work.mkdir()
                made.append(make_pack(model, tokenizer, base, learned, suites[i], settings,
                                      config, store, work, base_dir=base_dir, seed=seed,
                                      limit=limit, progress=stage_progress(progress, stages, i)))
            packs.append(made[0])
            if len(made) > 1:
                if progress is not None:
                    progress(f"{stage.name}:fuse", (i + 1) / len(stages))
                fusions.append(fusion_scores(model, tokenizer, made, taught, suites[i], spec,
                                             store, Path(tmp, f"{i}-fused"), general=general,
                                             seed=seed, top_k=settings.top_k, limit=limit))
            if progress is not None:
                progress(f"{stage.name}:score", (i + 1) / len(stages))
            # The last stage's router is stored: the run's model state carries it.
            row, router = routed_scores(model, tokenizer, [p.deltas for p in packs], stages,
                                        suites, general=general, seed=seed,
                                        router=settings.router, top_k=settings.top_k,
                                        limit=limit, store=store if i == len(stages) - 1
                                        else None)
            rows.append(row)
            routers.append(router)
    return rows, packs, routers, fusions


def stage_verdicts(policy: GatePolicy, suites: Sequence[Suite], base_row: Sequence[Score],
                   rows: Sequence[Sequence[Score]], packs: Sequence[StagePack]) -> list[dict]:
    """The gate's decision (`gate.decision.decide`, with ``policy``) on each stage's pack, as a
    learning job's gate takes it: the state after stage i against the state before it (the
    base for the first), paired prompt by prompt on every suite, the new skill's gain and the
    pack's fidelity to its own fine-tune, and no drop on the skills before it. The run scored
    no general suite, so none is checked.

    The verdicts are recorded, not acted on: a pack the gate would reject still joins the
    later stages, so that every method learns the same curriculum."""
    names = [s.name for s in suites]
    out, before = [], base_row
    for i, (row, pack) in enumerate(zip(rows, packs, strict=True)):
        decision = decide(policy, new_skill=names[i], before=dict(zip(names, before, strict=True)),
                          after=dict(zip(names, row, strict=True)), earlier_skills=names[:i],
                          general_suites=(), finetune=pack.finetune)
        out.append({"skill": pack.skill, "summary": decision.summary(), **decision.as_dict()})
        before = row
    return out
