"""What one experiment run does for its method: the `EXECUTORS` registry (graft, naive_ft,
replay, joint, lora_seq, multi_lora, task_arithmetic, ties, dare_ties), the refusal of what is
not runnable yet, and the inputs a run reads.

Every executor trains the spec's base, scores every skill's suite with the lm-eval path the
demo and the gate use (`evaluation.scores.model_score` on `evaluation.suites.skill_suite`), and
returns its accuracy matrix, continual metrics and bytes per skill: what the method stores for
each skill (a dense delta or a LoRA adapter's parameters at fp16, or a pack file's bytes).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Protocol

from sqlalchemy.orm import Session

from ..blobstore import BlobStore
from ..catalog import get_base, get_skill
from ..catalog.models import BaseCheckpoint, Experiment
from ..errors import ConfigError
from ..evaluation.cache import Suite, cache_version
from ..evaluation.metrics import ContinualMetrics, continual_metrics
from ..evaluation.scores import Score
from ..evaluation.suites import general_suite, skill_suite, suite_prompts
from ..registry import Registry
from ..states.service import ROUTER_PROMPTS
from ..training.baselines import Stage, replay_stages, train_joint
from .baselines import (
    earlier_sweep,
    lora_choice,
    lora_sequence_scores,
    merge_fusions,
    merge_scores,
    multi_lora_scores,
)
from .catalog import get_run
from .distilled import Taught, distil_stages
from .graft import graft_scores, policy_label, stage_verdicts
from .sequential import FP16_BYTES, ChangedParams, sequential_scores, skill_stages, suite_scores
from .spec import ExperimentSpec, parse_spec

SCORER = "lm-eval"
# progress(stage, fraction): raises RunCancelled when the run was cancelled meanwhile.
Check = Callable[[str, float], None]


@dataclass(frozen=True)
class RunInputs:
    """What a run needs, read from the catalog before it trains (no session is held after)."""

    run_id: int
    method: str
    seed: int
    spec: ExperimentSpec
    base_dir: str
    stages: list[Stage]
    suites: list[Suite]
    # The general suite's training prompts: the router's NONE class (inputs that get no
    # adapter), as the gate trains it for packs; () when the skills have no general suite.
    general: tuple[str, ...] = ()
    # An earlier seed's LoRA sweep of this method ({"seed", "chosen", "points"}): reused.
    earlier_sweep: dict | None = None
    # Where a graft run puts its packs (the catalog's blob store).
    store: BlobStore | None = None
    # Each source the spec names -> its checkpoint folder (distilled skills' teachers).
    source_dirs: dict[str, str] = field(default_factory=dict)
    # What each source taught each distilled skill; filled by `execute` (`distil_stages`).
    teachers: dict[str, tuple[Taught, ...]] = field(default_factory=dict)

    @property
    def train(self):
        """The spec's SFT settings at this run's seed."""
        return self.spec.train.model_copy(update={"seed": self.seed})


class Executor(Protocol):
    """One runnable method: trains the base for a run and returns the run's result."""

    @property
    def name(self) -> str: ...

    def execute(self, inputs: RunInputs, check: Check) -> dict: ...


@dataclass(frozen=True)
class Sequential:
    """Full fine-tuning skill after skill; with the spec's ``replay`` rows of every earlier
    skill mixed into each stage (method ``replay``; ``naive_ft`` mixes none)."""

    name: str

    def execute(self, inputs: RunInputs, check: Check) -> dict:
        from ..models import load_causal_lm

        model, tok = load_causal_lm(inputs.base_dir, fingerprint=False)
        limit = inputs.spec.eval_limit
        base_row = suite_scores(model, tok, inputs.suites, limit=limit)
        rows = inputs.spec.settings(self.name).replay
        stages = replay_stages(inputs.stages, rows, inputs.seed) if rows else inputs.stages
        counter, changed, dpo = ChangedParams(model), [], {}

        def after_stage(i: int, fit) -> None:
            changed.append(counter.step())
            if "dpo" in fit.metrics:
                dpo[stages[i].name] = fit.metrics["dpo"]
            check(f"{stages[i].name}:score", (i + 1) / len(stages))

        scores = sequential_scores(model, tok, stages, inputs.suites, inputs.train, limit=limit,
                                   progress=check, after_stage=after_stage)
        matrix = [[s.value for s in row] for row in scores]
        metrics = continual_metrics(matrix, [s.value for s in base_row])
        return _result(inputs, scores, metrics, base_row, changed,
                       replay_rows=rows, n_train=[len(s.train) for s in stages],
                       **({"dpo": dpo} if dpo else {}))


@dataclass(frozen=True)
class Joint:
    """Multi-task training on every skill at once: the upper bound. Its matrix is one row
    (there are no stages to forget across), and its one delta is shared by every skill. It
    may take as many optimiser steps as the sequential methods take over all their stages
    (``max_steps`` per stage times the stages): with ``max_steps`` alone it saw a third of
    their steps on three skills and scored below `naive_ft`, no upper bound at all."""

    name: str = "joint"

    def execute(self, inputs: RunInputs, check: Check) -> dict:
        from ..models import load_causal_lm

        model, tok = load_causal_lm(inputs.base_dir, fingerprint=False)
        limit = inputs.spec.eval_limit
        base_row = suite_scores(model, tok, inputs.suites, limit=limit)
        counter = ChangedParams(model)
        config = inputs.train.model_copy(
            update={"max_steps": inputs.train.max_steps * len(inputs.stages)})
        trained = train_joint(model, tok, inputs.stages, config, check)
        changed = counter.step()
        check("joint:score", 1.0)
        final = suite_scores(model, tok, inputs.suites, limit=limit)
        values = [s.value for s in final]
        metrics = ContinualMetrics(average_accuracy=sum(values) / len(values), bwt=None,
                                   forgetting=None, forward_transfer=None,
                                   learned_average_accuracy=sum(values) / len(values))
        share = changed / len(inputs.stages)
        return _result(inputs, [final], metrics, base_row, [share] * len(inputs.stages),
                       n_train=[sum(len(s.train) for s in inputs.stages)],
                       max_steps=config.max_steps, steps=trained.metrics.get("steps"),
                       **({"dpo": trained.metrics["dpo"]} if "dpo" in trained.metrics else {}))


def _base_row(inputs: RunInputs):
    from ..models import load_causal_lm

    model, tok = load_causal_lm(inputs.base_dir, fingerprint=False)
    return model, tok, suite_scores(model, tok, inputs.suites, limit=inputs.spec.eval_limit)


def _lora(inputs: RunInputs, model, tok, check: Check):
    """The LoRA config to train and how it was picked (an earlier seed's, else swept)."""
    return lora_choice(model, tok, inputs.stages, inputs.spec.settings(inputs.method),
                       inputs.train, earlier=inputs.earlier_sweep,
                       eval_limit=inputs.spec.eval_limit,
                       progress=lambda s, f: check(f"sweep:{s}", 0.0))


@dataclass(frozen=True)
class LoRASequential:
    """One LoRA adapter on the base, trained skill after skill (the same adapter continuing).
    Every skill's bytes are the whole adapter's: it is what the model keeps for all of them."""

    name: str = "lora_seq"

    def execute(self, inputs: RunInputs, check: Check) -> dict:
        model, tok, base_row = _base_row(inputs)
        config, picked = _lora(inputs, model, tok, check)
        scores, params = lora_sequence_scores(model, tok, inputs.stages, inputs.suites, config,
                                              limit=inputs.spec.eval_limit, progress=check)
        metrics = continual_metrics([[s.value for s in row] for row in scores],
                                    [s.value for s in base_row])
        return _result(inputs, scores, metrics, base_row, [params] * len(inputs.stages),
                       **picked, adapter_params=params)


@dataclass(frozen=True)
class MultiLoRA:
    """One LoRA adapter per skill, each trained from the base, routed as packs are: each
    adapter's B @ A * scale is a dense delta in the DeltaBank, picked per input by the learned
    router. A skill's bytes are its own adapter's."""

    name: str = "multi_lora"

    def execute(self, inputs: RunInputs, check: Check) -> dict:
        model, tok, base_row = _base_row(inputs)
        config, picked = _lora(inputs, model, tok, check)
        scores, sizes, routers = multi_lora_scores(
            model, tok, inputs.stages, inputs.suites, config, general=inputs.general,
            seed=inputs.seed, limit=inputs.spec.eval_limit, progress=check)
        metrics = continual_metrics([[s.value for s in row] for row in scores],
                                    [s.value for s in base_row])
        return _result(inputs, scores, metrics, base_row, sizes, **picked, routers=routers)


@dataclass(frozen=True)
class Merged:
    """Full fine-tuning of each skill from the base, and after each stage the deltas so far
    merged (``task_arithmetic``, ``ties`` or ``dare_ties``, with the spec's scale and density)
    onto the base. A skill's bytes are its fine-tune's dense fp16 delta."""

    name: str

    def execute(self, inputs: RunInputs, check: Check) -> dict:
        model, tok, base_row = _base_row(inputs)
        fusions, drop = merge_fusions(self.name, inputs.spec.settings(self.name))
        run = merge_scores(model, tok, inputs.stages, inputs.suites, inputs.train, fusions,
                           dare_density=drop, seed=inputs.seed, limit=inputs.spec.eval_limit,
                           progress=check)
        metrics = continual_metrics([[s.value for s in row] for row in run.rows],
                                    [s.value for s in base_row])
        density = getattr(next(iter(fusions.values())), "density", None) if drop is None else drop
        return _result(inputs, run.rows, metrics, base_row, run.changed,
                       merge={"method": self.name, "scale": run.scales[-1]["chosen"],
                              "density": density, "scales": run.scales},
                       **({"dpo": run.dpo} if run.dpo else {}))


@dataclass(frozen=True)
class GraftLLM:
    """GraftLLM: each skill fine-tuned from the base, its delta compressed into a SkillPack
    (the spec's policy or budget, tuned ``tune_steps``) stored in the blob store, and after
    each stage the packs so far routed by the spec's router. A skill's bytes are its pack
    file's; ``changed_params`` are its fine-tune's (the dense delta the pack compresses)."""

    name: str = "graft"

    def execute(self, inputs: RunInputs, check: Check) -> dict:
        from ..models import load_causal_lm

        if inputs.store is None:
            raise ConfigError(f"run {inputs.run_id}: graft stores its packs but was given no "
                              "blob store; build its inputs with run_inputs.")
        # Fingerprinted: a pack names its base, and tuning checks it.
        model, tok = load_causal_lm(inputs.base_dir)
        settings, limit = inputs.spec.settings(self.name), inputs.spec.eval_limit
        base_row = suite_scores(model, tok, inputs.suites, limit=limit)
        rows, packs, routers, fusion = graft_scores(
            model, tok, inputs.stages, inputs.suites, settings, inputs.train, inputs.store,
            base_dir=inputs.base_dir, general=inputs.general, seed=inputs.seed, limit=limit,
            teachers=inputs.teachers, spec=inputs.spec, progress=check)
        metrics = continual_metrics([[s.value for s in row] for row in rows],
                                    [s.value for s in base_row])
        return _result(inputs, rows, metrics, base_row, [p.changed_params for p in packs],
                       stored=[p.bytes for p in packs], policy=policy_label(settings),
                       budget=settings.budget, router=settings.router, top_k=settings.top_k,
                       tune_steps=settings.tune_steps,
                       tune_objective=settings.tune_objective, packs=[p.record() for p in packs],
                       finetune_scores={p.skill: p.finetune.value for p in packs},
                       finetune_n={p.skill: p.finetune.n for p in packs},
                       routers=routers,
                       router_accuracy=[r.get("test_accuracy") for r in routers],
                       fusion=fusion,
                       gate=stage_verdicts(inputs.spec.gate, inputs.suites, base_row, rows,
                                           packs))


EXECUTORS: Registry[Executor] = Registry(
    "experiment method", (GraftLLM(), Sequential("naive_ft"), Sequential("replay"), Joint(),
                          LoRASequential(), MultiLoRA(), Merged("task_arithmetic"),
                          Merged("ties"), Merged("dare_ties")))


def _result(inputs: RunInputs, scores: list[list[Score]], metrics: ContinualMetrics,
            base_row: list[Score], changed: list[float], *, stored: list[int] | None = None,
            **extra) -> dict:
    """A run's result; bytes per skill are ``stored`` (files), else the changed parameters at
    fp16."""
    names = [s.name for s in inputs.stages]
    stored = stored if stored is not None else [round(c * FP16_BYTES) for c in changed]
    return {"skills": names,
            "accuracy_matrix": [[s.value for s in row] for row in scores],
            "n": [[s.n for s in row] for row in scores],
            "base_scores": [s.value for s in base_row],
            "metrics": metrics.as_dict(),
            "changed_params": dict(zip(names, (round(c) for c in changed), strict=True)),
            "bytes_per_skill": dict(zip(names, stored, strict=True)),
            "scorer": SCORER, "limit": inputs.spec.eval_limit,
            "suite_versions": [cache_version(s, inputs.spec.eval_limit) for s in inputs.suites],
            "train": inputs.train.model_dump(mode="json"), **extra}


def check_runnable(spec: ExperimentSpec) -> None:
    """Refuse, before anything is queued, a spec with a method no executor runs."""
    for method in spec.methods.chosen():
        if method not in EXECUTORS:
            raise ConfigError(f"method {method} is not runnable yet (runnable now: "
                              f"{', '.join(EXECUTORS)}); drop it from the spec's methods.")


def run_inputs(session: Session, store, run_id: int) -> RunInputs:
    """A run's spec, base folder, skills' rows and suites, the general suite's prompts and an
    earlier seed's LoRA sweep, read from the catalog."""
    run = get_run(session, run_id)
    experiment = session.get(Experiment, run.experiment_id)
    spec = parse_spec(experiment.spec, f"experiment {experiment.id}'s spec")
    skills = [get_skill(session, stage.name) for stage in spec.skills]
    base = session.get(BaseCheckpoint, experiment.base_id)
    suites = [skill_suite(s) for s in skills]
    general = general_suite(beside=suites, base=base)
    return RunInputs(run_id=run.id, method=run.method, seed=run.seed, spec=spec,
                     base_dir=base.uri, stages=skill_stages(store, skills), suites=suites,
                     source_dirs={name: get_base(session, name).uri for name in spec.sources},
                     general=tuple(suite_prompts(general, ROUTER_PROMPTS)) if general else (),
                     earlier_sweep=earlier_sweep(session, run, spec.seeds), store=store)


def execute(inputs: RunInputs, check: Check) -> dict:
    """Distil the skills learned from sources (`distil_stages`), then run the method's
    executor; the result records what each source taught and how long it all took."""
    started = time.perf_counter()
    distilled = {}
    if any(s.method != "sft" for s in inputs.spec.skills):
        stages, teachers = distil_stages(inputs.spec, inputs.stages, inputs.source_dirs,
                                         lambda s, f: check(f"distil:{s}", 0.0),
                                         seed=inputs.seed)
        inputs = replace(inputs, stages=stages, teachers=teachers)
        distilled = {"distilled": {skill: {t.source: t.stats for t in taught}
                                   for skill, taught in teachers.items()}}
    result = EXECUTORS[inputs.method].execute(inputs, check)
    return {**result, **distilled, "method": inputs.method, "seed": inputs.seed,
            "seconds": round(time.perf_counter() - started, 3)}
