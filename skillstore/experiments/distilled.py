"""Skills an experiment run distils from source models: each source answers the skill's training
and validation prompts, the skill's checker keeps the right answers, and those rows are what
the target learns (GraftLLM's transfer through text, so any source tokenizer will do).

A skill learned from one source trains on that source's rows; from several, every method but
`graft` trains on their rows pooled (a prompt once, the first listed source's answer), while
`graft` makes one pack per source and fuses them (`experiments.hetero`). A skill learned by
`dpo` is distilled the same way, and its stage also carries the spec's DPO settings and the
answers its sources got wrong: the methods run DPO after SFT on it (`training.baselines.prefer`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from ..errors import TrainingError
from ..training.baselines import Stage
from ..training.distill import Checker, skill_checker, source_rows
from ..training.dpo import DPOConfig
from ..training.sft import Progress
from .spec import ExperimentSpec


@dataclass(frozen=True)
class Taught:
    """What one source taught one skill: its accepted rows as a stage, and how many it kept."""

    source: str
    stage: Stage
    stats: dict


def stage_checker(stage: Stage) -> Checker:
    """The skill's rule-based check over the stage's rows, as a learning job checks its
    distilled answers (`training.distill.skill_checker`)."""
    return skill_checker(stage.name, [*stage.train, *stage.validation])


def taught_stage(source, source_tokenizer, name: str, stage: Stage, *,
                 prompts: int | None = None, progress: Progress | None = None,
                 dpo: DPOConfig | None = None) -> Taught:
    """Source ``name`` answers ``stage``'s first ``prompts`` training prompts (all when None)
    and its validation prompts; the rows it got right become the stage it teaches. With
    ``dpo`` the stage asks for DPO after SFT, and keeps the answers the source got wrong as
    DPO's first rejected candidates."""
    check = stage_checker(stage)
    train = [r["prompt"] for r in stage.train[:prompts]]
    wrong: dict[str, list[str]] = {}
    rows, stats = source_rows(source, source_tokenizer, train, checker=check, progress=progress,
                              rejected=wrong if dpo is not None else None)
    if not rows:
        raise TrainingError(f"Source {name!r} answered none of skill {stage.name!r}'s "
                            f"{len(train)} prompts correctly; train the source on the skill, "
                            "or drop it from the skill's source in the spec.")
    val = ([] if not stage.validation else
           source_rows(source, source_tokenizer, [r["prompt"] for r in stage.validation],
                       checker=check)[0])
    stats = {**stats, "n_validation": len(val)}
    if dpo is not None:
        stats["n_rejected"] = sum(len(a) for a in wrong.values())
    return Taught(name, Stage(stage.name, rows, val, [], dpo=dpo, rejected=wrong), stats)


def pooled(stage: Stage, taught: Sequence[Taught]) -> Stage:
    """One stage from several sources' rows: each prompt once, the first source's answer; a
    dpo stage keeps every source's wrong answers."""
    def once(rows_of: Callable[[Stage], list[dict]]) -> list[dict]:
        seen: dict[str, dict] = {}
        for t in taught:
            for row in rows_of(t.stage):
                seen.setdefault(row["prompt"], row)
        return list(seen.values())

    wrong: dict[str, list[str]] = {}
    for t in taught:
        for prompt, answers in t.stage.rejected.items():
            wrong.setdefault(prompt, []).extend(answers)
    return replace(taught[0].stage, train=once(lambda s: s.train),
                   validation=once(lambda s: s.validation), rejected=wrong)


def distil_stages(spec: ExperimentSpec, stages: Sequence[Stage], source_dirs: Mapping[str, str],
                  progress: Progress | None = None, *, seed: int = 0
                  ) -> tuple[list[Stage], dict[str, tuple[Taught, ...]]]:
    """The stages a run trains on (a distilled skill's rows replaced by its sources' accepted
    answers, pooled over several; a dpo skill's with the spec's DPO settings at ``seed``) and
    what each source taught each distilled skill. Each source is loaded once, when a stage
    first names it."""
    dpo = spec.dpo.model_copy(update={"seed": seed})
    from ..models import load_causal_lm

    loaded: dict[str, tuple] = {}
    out, teachers = [], {}
    for i, (wanted, stage) in enumerate(zip(spec.skills, stages, strict=True)):
        if wanted.method == "sft":
            out.append(stage)
            continue
        taught = []
        for name in wanted.source:
            if name not in loaded:
                loaded[name] = load_causal_lm(source_dirs[name], fingerprint=False)
            sub = ((lambda s, f, at=f"{stage.name}:{name}", k=i:
                    progress(f"{at}:{s}", (k + f) / len(stages))) if progress else None)
            taught.append(taught_stage(*loaded[name], name, stage,
                                       prompts=spec.distill_prompts, progress=sub,
                                       dpo=dpo if wanted.method == "dpo" else None))
        teachers[stage.name] = tuple(taught)
        out.append(pooled(stage, taught))
    return out, teachers
