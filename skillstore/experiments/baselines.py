"""The fair baselines' loops for experiment runs: LoRA in sequence, one LoRA per skill behind the
learned router, and task arithmetic / TIES / DARE-TIES over per-skill fine-tunes; the fine-tune
from the base and the routed scoring that `graft` shares with them.

Each loop trains with the library's own trainers, scores every suite after every stage with
`sequential.suite_scores` (the lm-eval path of every method), and returns the score rows with
the parameters each skill stores; the executors in `methods` turn them into a run's result.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa
import torch
from sqlalchemy.orm import Session

from ..catalog.models import ExperimentRun
from ..catalog.schema import JobStatus
from ..errors import ConfigError
from ..evaluation.cache import Suite
from ..evaluation.scores import Score
from ..evaluation.suites import suite_prompts
from ..packs.parts import DensePart, LowRankPart, Part
from ..routing import NONE_CLASS, DeltaBank, PackDeltas, RoutedModel, train_router
from ..routing.evaluate import EVAL_PROMPTS, evaluate_router
from ..states.fusion import FusionMethod, TaskArithmetic, Ties
from ..states.service import CALIBRATION, ROUTER_PROMPTS, store_router
from ..training.backends import BUILTIN
from ..training.baselines import (
    LoRAConfig,
    Stage,
    adapter_params,
    fit_stage,
    lora_model,
    sweep_lora,
)
from ..training.generate import exact_match
from ..training.sft import Progress, SFTConfig
from .sequential import suite_scores
from .spec import LoRASweep, Merge

# TIES keeps the top 20% of each delta by magnitude (Yadav et al. 2023, and states.fusion's
# default); DARE-TIES keeps the same share at random. A spec's ``density`` overrides it.
DEFAULT_DENSITY = 0.2
Rows = list[list[Score]]


# --- LoRA: the sweep, or the choice an earlier seed's run made ------------------------------

def earlier_sweep(session: Session, run: ExperimentRun, seeds: Sequence[int]) -> dict | None:
    """What the first run of ``run``'s experiment and method at a seed listed before
    ``run.seed`` chose, once it succeeded with a choice: ``{"seed", "chosen", "points"}``.
    None when no such run has finished yet (the run then sweeps for itself): the spec's
    "the sweeps run on the first seed and their choice is reused", kept simple."""
    seeds = list(seeds)
    before = seeds[: seeds.index(run.seed)] if run.seed in seeds else []
    if not before:
        return None
    rows = session.scalars(sa.select(ExperimentRun).where(
        ExperimentRun.experiment_id == run.experiment_id, ExperimentRun.method == run.method,
        ExperimentRun.seed.in_(before), ExperimentRun.status == JobStatus.succeeded))
    for row in sorted(rows, key=lambda r: before.index(r.seed)):
        result = row.result or {}
        if result.get("chosen"):
            return {"seed": row.seed, "chosen": result["chosen"],
                    "points": (result.get("sweep") or {}).get("points", [])}
    return None


def lora_choice(model, tokenizer, stages: Sequence[Stage], grid: LoRASweep, sft: SFTConfig, *,
                earlier: dict | None, eval_limit: int | None,
                progress: Progress | None = None) -> tuple[LoRAConfig, dict]:
    """The LoRA to train and the record of how it was picked: ``earlier``'s choice when an
    earlier seed made one, the grid's point when it has only one (nothing to choose: no
    training spent on a sweep, ``points`` empty), else `sweep_lora` over ``grid`` on the first
    skill's validation split. The record is ``{"chosen": {"rank", "lr"}, "sweep": {"points",
    "reused_from_seed"}}``."""
    if earlier is not None:
        rank, lr = earlier["chosen"]["rank"], earlier["chosen"]["lr"]
        sweep = {"points": earlier["points"], "reused_from_seed": earlier["seed"]}
    elif len(grid.ranks) == 1 and len(grid.lrs) == 1:
        (rank,), (lr,) = grid.ranks, grid.lrs
        sweep = {"points": [], "reused_from_seed": None}
    else:
        first = stages[0]
        if not first.validation:
            raise ConfigError(f"skill {first.name!r} has no validation rows to pick the LoRA "
                              "rank and learning rate on; register it with some.")
        swept = sweep_lora(model, tokenizer, first.train, first.validation, grid.ranks, grid.lrs,
                           sft, eval_limit=eval_limit, progress=progress)
        rank, lr = swept.rank, swept.lr
        sweep = {"points": swept.points, "reused_from_seed": None}
    config = LoRAConfig(rank=rank, sft=sft.model_copy(update={"lr": lr}))
    return config, {"chosen": {"rank": rank, "lr": lr}, "sweep": sweep}


def stage_progress(progress: Progress | None, stages: Sequence[Stage], i: int):
    return ((lambda s, f, n=stages[i].name: progress(f"{n}:{s}", (i + f) / len(stages)))
            if progress else None)


def lora_sequence_scores(model, tokenizer, stages: Sequence[Stage], suites: Sequence[Suite],
                         config: LoRAConfig, *, limit: int | None = None,
                         progress: Progress | None = None) -> tuple[Rows, int]:
    """One LoRA adapter on ``model`` (wrapped in place) trained on each stage in turn, the
    same adapter continuing, scored after every stage; returns the rows and the adapter's
    parameter count."""
    wrapped = lora_model(model, config)
    scored = wrapped.get_base_model()  # the base's own class with the adapter's layers in it
    rows = []
    for i, stage in enumerate(stages):
        BUILTIN.sft(wrapped, tokenizer, stage.train, stage.validation, config.sft,
                    stage_progress(progress, stages, i))
        if progress is not None:
            progress(f"{stage.name}:score", (i + 1) / len(stages))
        rows.append(suite_scores(scored, tokenizer, suites, limit=limit))
    return rows, adapter_params(wrapped)


def lora_parts(wrapped) -> dict[str, Part]:
    """The active adapter of a PEFT-wrapped model as one part per base tensor, keyed by the
    base's tensor names: a linear layer's adapter as its factors (B * scale and A, float32, in
    the base weight's own layout), so routing applies it at the adapter's rank as a multi-LoRA
    server would; any other adapted module (an embedding) as its dense delta."""
    from peft.tuners.lora import LoraLayer

    adapter = wrapped.active_adapter
    parts: dict[str, Part] = {}
    for name, module in wrapped.get_base_model().named_modules():
        if not isinstance(module, LoraLayer) or adapter not in module.lora_A:
            continue
        key = f"{name}.weight"
        if isinstance(module.lora_A[adapter], torch.nn.Linear):
            a = module.lora_A[adapter].weight.detach().float().cpu()
            b = module.lora_B[adapter].weight.detach().float().cpu() * module.scaling[adapter]
            # delta = B @ A; a Conv1D (fan_in_fan_out) stores its weight transposed: A.T @ B.T
            parts[key] = (LowRankPart(key, a.T.contiguous(), b.T.contiguous())
                          if module.fan_in_fan_out else LowRankPart(key, b, a))
        else:
            parts[key] = DensePart(key, module.get_delta_weight(adapter).detach().float().cpu())
    return parts


def class_prompts(stages: Sequence[Stage], general: Sequence[str] = ()) -> dict[str, list[str]]:
    """class -> prompts a learned router of ``stages``' adapters or packs trains on: each
    skill's first ``ROUTER_PROMPTS`` training prompts, and ``general`` (inputs that get none)
    as NONE_CLASS, as `states.service.router_prompts` reads them from the catalog."""
    prompts = {s.name: [r["prompt"] for r in s.train[:ROUTER_PROMPTS]] for s in stages}
    if general:
        prompts[NONE_CLASS] = list(general[:ROUTER_PROMPTS])
    return prompts


def _test_accuracy(clf, model, tokenizer, stages: Sequence[Stage],
                   suites: Sequence[Suite]) -> dict:
    """The learned router's accuracy on the test prompts of the suites of ``stages`` (at most
    EVAL_PROMPTS each, labelled with their skill; an abstention counts as wrong), which it
    never trained on; {} when the suites have none."""
    held = {s.name: p for s, suite in zip(stages, suites, strict=False)
            if (p := suite_prompts(suite, EVAL_PROMPTS, split="test"))}
    if not held:
        return {}
    measured = evaluate_router(clf, model, tokenizer, held)
    return {"test_accuracy": measured["accuracy"], "test_n": measured["n"]}


def routed_scores(model, tokenizer, adapters: Sequence[PackDeltas], stages: Sequence[Stage],
                  suites: Sequence[Suite], *, general: Sequence[str] = (), seed: int,
                  router: str = "learned", top_k: int = 1, limit: int | None = None,
                  store=None) -> tuple[list[Score], dict]:
    """``model`` scored on every suite (suite j is ``stages[j]``'s skill) with ``adapters``,
    one per stage of ``stages`` learned so far, hooked in by the DeltaBank that routes packs
    and picked per input by ``router`` (`routing.ROUTERS`):

    - ``learned``: the router of `states.service` (`train_router` on `class_prompts`, CALIBRATION
      held out for abstention, seeded by ``seed``), with its accuracy on the learned suites'
      test prompts; one class alone (one adapter and no general prompts) gets every input
      (router ``none``), as a state of one pack does;
    - ``tag``: each suite's inputs tagged with its skill: its own adapter, none before it is
      learned;
    - ``none``: every adapter on every input.

    With ``store`` (a blob store), a learned router's file is stored there and its digest and
    config facts are in the info (``blob_digest``, ``config``), as a model state records them.
    """
    bank, learned = DeltaBank(model, adapters), stages[: len(adapters)]
    if router == "tag":
        names, row = [a.name for a in adapters], []
        for stage, suite in zip(stages, suites, strict=True):
            tag = stage.name if stage.name in names else None
            with RoutedModel(model, bank, "tag", tag=tag):
                row += suite_scores(model, tokenizer, [suite], limit=limit)
        return row, {"router": "tag"}
    prompts = class_prompts(learned, general)
    if router == "none" or len(prompts) < 2:
        routed, info = RoutedModel(model, bank, "none"), {"router": "none"}
    else:
        trained = train_router(model, tokenizer, prompts, top_k=min(top_k, len(prompts)),
                               calibration=CALIBRATION, seed=seed)
        routed = RoutedModel(model, bank, "learned", classifier=trained.classifier,
                             pad_token_id=tokenizer.pad_token_id)
        info = {"router": "learned", "classes": list(prompts),
                "train_accuracy": trained.train_accuracy,
                **_test_accuracy(trained.classifier, model, tokenizer, learned, suites)}
        if store is not None:
            info["blob_digest"], info["config"] = store_router(store, trained,
                                                               min(top_k, len(prompts)))
    with routed:
        return suite_scores(model, tokenizer, suites, limit=limit), info


def multi_lora_scores(model, tokenizer, stages: Sequence[Stage], suites: Sequence[Suite],
                      config: LoRAConfig, *, general: Sequence[str] = (), seed: int,
                      limit: int | None = None, progress: Progress | None = None
                      ) -> tuple[Rows, list[int], list[dict]]:
    """One adapter per stage, each trained from ``model`` (left as it is), and after each stage
    the adapters so far routed by a router trained on their skills' training prompts (and
    ``general`` as NONE_CLASS); returns the rows, each adapter's parameter count and each
    stage's router."""
    adapters, sizes, rows, routers = [], [], [], []
    for i, stage in enumerate(stages):
        wrapped = lora_model(copy.deepcopy(model), config)
        sizes.append(adapter_params(wrapped))
        BUILTIN.sft(wrapped, tokenizer, stage.train, stage.validation, config.sft,
                    stage_progress(progress, stages, i))
        adapters.append(PackDeltas(stage.name, lora_parts(wrapped)))
        del wrapped
        if progress is not None:
            progress(f"{stage.name}:score", (i + 1) / len(stages))
        row, router = routed_scores(model, tokenizer, adapters, stages, suites,
                                    general=general, seed=seed, limit=limit)
        rows.append(row)
        routers.append(router)
    return rows, sizes, routers


# --- Merges over per-skill fine-tunes --------------------------------------------------------

def merge_method(name: str, settings: Merge, scale: float = 1.0
                 ) -> tuple[FusionMethod, float | None]:
    """The `states.fusion` method that merges the deltas for ``name`` at ``scale``, and the
    density DARE drops each delta to first (None: no drop). DARE-TIES is DARE's random drop
    with rescale, then TIES's sign election and disjoint mean with no further trim."""
    density = settings.density or DEFAULT_DENSITY
    if name == "task_arithmetic":
        return TaskArithmetic(lam=scale), None
    if name == "ties":
        return Ties(density=density, lam=scale), None
    if name == "dare_ties":
        return Ties(density=1.0, lam=scale), density
    raise ConfigError(f"no merge method {name!r}; valid: task_arithmetic, ties, dare_ties.")


def merge_fusions(name: str, settings: Merge) -> tuple[dict[float, FusionMethod], float | None]:
    """The fusion at every scale of ``settings.grid()``, and DARE's density."""
    fusions = {s: merge_method(name, settings, s)[0] for s in settings.grid()}
    return fusions, merge_method(name, settings)[1]


@dataclass(frozen=True)
class MergeRun:
    """What `merge_scores` measured: the rows, each fine-tune's changed parameters, each dpo
    stage's DPO metrics, and after each stage the scale picked and every scale's score."""

    rows: Rows
    changed: list[int]
    dpo: dict[str, dict]
    scales: list[dict]


def pick_scale(model, tokenizer, base: dict[str, torch.Tensor],
               deltas: Sequence[dict[str, torch.Tensor]], fusions: dict[float, FusionMethod],
               stages: Sequence[Stage], *, limit: int | None = None) -> dict:
    """The scale whose merge of ``deltas`` has the best mean validation exact match over
    ``stages``, as the LoRA sweep picks on validation rows; with one scale, that one unscored.
    Ties go to the scale nearest 1 (the plain merge; then the larger): where every scale
    scores the same, validation said nothing, and the merge reported is the method's own.
    ``model`` is left holding the merge at the scale picked."""
    points = []
    if len(fusions) > 1:
        for scale, fusion in fusions.items():
            load_weights(model, base, merged(fusion, deltas))
            accs = [exact_match(model, tokenizer, s.validation, limit=limit).accuracy
                    for s in stages]
            points.append({"scale": scale, "val_accuracy": sum(accs) / len(accs)})
        chosen = max(points, key=lambda p: (p["val_accuracy"], -abs(p["scale"] - 1.0),
                                            p["scale"]))["scale"]
    else:
        chosen = next(iter(fusions))
    load_weights(model, base, merged(fusions[chosen], deltas))
    return {"chosen": chosen, "points": points}


def dare(delta: torch.Tensor, density: float, generator: torch.Generator) -> torch.Tensor:
    """DARE (Yu et al. 2024): keep each entry with probability ``density`` and rescale the
    kept ones by 1 / density, so the delta's expectation is unchanged."""
    keep = torch.rand(delta.shape, generator=generator) < density
    return torch.where(keep, delta / density, torch.zeros_like(delta))


def merged(fusion: FusionMethod, deltas: Sequence[dict[str, torch.Tensor]]
           ) -> dict[str, torch.Tensor]:
    """``fusion`` over the deltas of several fine-tunes, tensor by tensor, each at scale 1."""
    return {name: fusion.merge([d[name] for d in deltas], [1.0] * len(deltas))
            for name in deltas[0]}


def weights_of(model) -> dict[str, torch.Tensor]:
    """A CPU copy of every floating-point parameter: the base to fine-tune each skill from."""
    return {n: p.detach().to("cpu", copy=True)
            for n, p in model.named_parameters() if p.is_floating_point()}


@torch.no_grad()
def load_weights(model, base: dict[str, torch.Tensor],
                 delta: dict[str, torch.Tensor] | None = None) -> None:
    """Set ``model``'s weights to ``base`` (+ ``delta``), each in its parameter's dtype."""
    for name, p in model.named_parameters():
        if name in base:
            w = base[name].float() + delta[name] if delta is not None else base[name]
            p.copy_(w.to(p.device, p.dtype))


def finetune_delta(model, tokenizer, base: dict[str, torch.Tensor], stage: Stage,
                   config: SFTConfig, progress: Progress | None = None
                   ) -> tuple[dict[str, torch.Tensor], dict | None]:
    """Full fine-tuning of ``stage`` from the base (`training.baselines.fit_stage`: SFT, then
    DPO for a dpo stage): ``model`` is set to ``base``, trained, and left holding the
    fine-tune; returns fine-tune - base per tensor (float32, on the CPU) and the DPO metrics
    (None without DPO). The merges and graft fine-tune each skill by this one function."""
    load_weights(model, base)
    fit = fit_stage(model, tokenizer, stage, config, progress)
    delta = {n: p.detach().float().cpu() - base[n].float()
             for n, p in model.named_parameters() if n in base}
    return delta, fit.metrics.get("dpo")


def changed_params(delta: dict[str, torch.Tensor]) -> int:
    """Entries a delta changes: the parameters its dense fp16 form stores."""
    return sum(int(d.count_nonzero()) for d in delta.values())


def merge_scores(model, tokenizer, stages: Sequence[Stage], suites: Sequence[Suite],
                 config: SFTConfig, fusions: dict[float, FusionMethod], *,
                 dare_density: float | None = None, seed: int = 0, limit: int | None = None,
                 progress: Progress | None = None) -> MergeRun:
    """Full fine-tuning of each stage from the base (``model``'s weights at the start), then
    after each stage i the deltas of stages 1..i merged onto the base at the scale of
    ``fusions`` (scale -> fusion) that `pick_scale` picks on the validation rows of stages
    1..i, and scored; with ``dare_density`` each delta is first DAREd, by a generator seeded
    with ``seed``, once when it is made. ``model`` ends holding the last merge."""
    base, deltas, changed, rows, dpo, scales = weights_of(model), [], [], [], {}, []
    generator = torch.Generator().manual_seed(seed)
    for i, stage in enumerate(stages):
        delta, preferred = finetune_delta(model, tokenizer, base, stage, config,
                                          stage_progress(progress, stages, i))
        if preferred is not None:
            dpo[stage.name] = preferred
        changed.append(changed_params(delta))
        if dare_density is not None:
            delta = {n: dare(d, dare_density, generator) for n, d in delta.items()}
        deltas.append(delta)
        if progress is not None:
            progress(f"{stage.name}:score", (i + 1) / len(stages))
        scales.append(pick_scale(model, tokenizer, base, deltas, fusions, stages[:i + 1],
                                 limit=limit))
        rows.append(suite_scores(model, tokenizer, suites, limit=limit))
    return MergeRun(rows, changed, dpo, scales)
