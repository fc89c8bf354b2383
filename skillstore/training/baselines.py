"""Baselines that show what GraftLLM buys: naive sequential FT, LoRA (swept), multi-task joint."""

from __future__ import annotations

import copy
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import torch
from pydantic import BaseModel, ConfigDict, Field

from .backends import BUILTIN
from .distill import skill_checker
from .dpo import DPOConfig, preference_pairs, train_dpo
from .generate import exact_match
from .protocol import Backend
from .sft import Progress, SFTConfig, TrainResult, clone_model, train_sft


@dataclass(frozen=True)
class Stage:
    """One skill in a learning sequence: its name and its splits as rows."""

    name: str
    train: list[dict]
    validation: list[dict]
    test: list[dict]
    # SFT then DPO (GraftLLM's preference stage): its settings, and the answers the sources
    # gave that the skill's checker refused (prompt -> answers), DPO's first rejected picks.
    dpo: DPOConfig | None = None
    rejected: Mapping[str, Sequence[str]] = field(default_factory=dict)
    # The skill's own rows, when ``train`` mixes in others (replay): DPO pairs only these.
    own: list[dict] | None = None

    @property
    def preference_rows(self) -> list[dict]:
        return self.train if self.own is None else self.own


def prefer(model, tokenizer, stages: Sequence[Stage], progress: Progress | None = None
           ) -> dict | None:
    """DPO for the ``stages`` that ask for it, on top of the SFT ``model`` (its copy is the
    frozen reference): verified answers are chosen, answers the skill's checker refuses are
    rejected (`training.dpo.preference_pairs`, the pipeline's dpo trainer's pairs), every
    stage's pairs pooled into one run at the first stage's settings. None when no stage asks;
    else the run's metrics with each stage's pair counts by origin."""
    wanted = [s for s in stages if s.dpo is not None]
    if not wanted:
        return None
    reference = clone_model(model)
    pairs, origins = [], {}
    for stage in wanted:
        rows = stage.preference_rows
        check = skill_checker(stage.name, [*rows, *stage.validation])
        made, origins[stage.name] = preference_pairs(
            model, tokenizer, rows, check,
            candidates={p: list(a) for p, a in stage.rejected.items()}, config=stage.dpo)
        pairs += made
    random.Random(wanted[0].dpo.seed).shuffle(pairs)
    sub = (lambda s, f: progress(f"dpo:{s}", f)) if progress else None
    result = train_dpo(model, reference, tokenizer, pairs, wanted[0].dpo, sub)
    return {**{k: v for k, v in result.metrics.items() if k != "history"}, "pairs": origins}


def fit_stage(model, tokenizer, stage: Stage, config: SFTConfig | None = None,
              progress: Progress | None = None) -> TrainResult:
    """Learn one stage in place: SFT on its rows, then DPO when the stage asks for it (`prefer`).
    Every baseline and experiment method that fine-tunes the whole model learns a stage by
    this one function."""
    result = train_sft(model, tokenizer, stage.train, stage.validation, config, progress)
    dpo = prefer(model, tokenizer, [stage], progress)
    return result if dpo is None else TrainResult(model, {**result.metrics, "dpo": dpo})


class LoRAConfig(BaseModel):
    """LoRA adapter shape; the SFT settings drive the optimisation."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rank: int = Field(default=8, gt=0)
    alpha: float | None = Field(default=None,
                                description="Scaling numerator; defaults to 2 * rank.")
    dropout: float = Field(default=0.0, ge=0, lt=1)
    target_modules: str | list[str] = "all-linear"
    sft: SFTConfig = SFTConfig(lr=3e-3)


def lora_model(model, config: LoRAConfig):
    """``model`` wrapped (in place) in a fresh PEFT LoRA adapter of ``config``'s shape, its
    random initialisation seeded by ``config.sft.seed`` (the same seed, the same adapter)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(config.sft.seed)
    peft_cfg = LoraConfig(r=config.rank, lora_alpha=config.alpha or 2 * config.rank,
                          lora_dropout=config.dropout, target_modules=config.target_modules,
                          task_type="CAUSAL_LM")
    return get_peft_model(model, peft_cfg)


def adapter_params(wrapped) -> int:
    """Parameters of a wrapped model's adapter: the ones its training updates."""
    return sum(p.numel() for p in wrapped.parameters() if p.requires_grad)


def train_lora(model, tokenizer, train_rows: list[dict], val_rows: list[dict] | None = None,
               config: LoRAConfig | None = None, progress: Progress | None = None, *,
               backend: Backend = BUILTIN) -> TrainResult:
    """Fine-tune a PEFT LoRA adapter and return the base with the adapter merged in.

    Merging gives a plain model of the base's architecture, so it is evaluated and compared
    (or packed) exactly like a fully fine-tuned one.
    """
    cfg = config or LoRAConfig()
    wrapped = lora_model(model, cfg)
    trainable = adapter_params(wrapped)
    result = backend.sft(wrapped, tokenizer, train_rows, val_rows, cfg.sft, progress)
    merged = wrapped.merge_and_unload()
    merged.eval()
    return TrainResult(merged, {**result.metrics, "rank": cfg.rank, "trainable_params": trainable})


@dataclass(frozen=True)
class LoRASweep:
    """The (rank, lr) a sweep chose and what every point scored on the validation rows."""

    rank: int
    lr: float
    points: list[dict]  # rank, lr, val_exact_match, n, best_val_loss, steps, per point

    def as_json(self) -> dict:
        return {"rank": self.rank, "lr": self.lr, "points": self.points}


def sweep_lora(model, tokenizer, train_rows: list[dict], val_rows: list[dict],
               ranks: Sequence[int], lrs: Sequence[float], sft: SFTConfig | None = None, *,
               eval_limit: int | None = None, backend: Backend = BUILTIN,
               progress: Progress | None = None) -> LoRASweep:
    """Train a LoRA on a fresh copy of ``model`` at every (rank, lr) and keep the one with the
    best validation exact match (ties: the lower validation loss, then the smaller rank), so a
    LoRA baseline is compared at its best settings rather than at one guess. ``model`` itself
    is left as it was."""
    if not ranks or not lrs:
        raise ValueError("A LoRA sweep needs at least one rank and one learning rate.")
    base = sft or SFTConfig()
    points, grid = [], [(rank, lr) for rank in ranks for lr in lrs]
    for k, (rank, lr) in enumerate(grid):
        cfg = LoRAConfig(rank=rank, sft=base.model_copy(update={"lr": lr}))
        sub = ((lambda s, f, k=k, at=f"r{rank}-lr{lr:g}": progress(f"{at}:{s}",
                                                                   (k + f) / len(grid)))
               if progress else None)
        result = train_lora(copy.deepcopy(model), tokenizer, train_rows, val_rows, cfg,
                            sub, backend=backend)
        score = exact_match(result.model, tokenizer, val_rows, limit=eval_limit)
        points.append({"rank": rank, "lr": lr, "val_exact_match": score.accuracy,
                       "n": score.n, "best_val_loss": result.metrics.get("best_val_loss"),
                       "steps": result.metrics.get("steps")})
        del result

    def order(p: dict) -> tuple:
        loss = p["best_val_loss"]
        return (-p["val_exact_match"], float("inf") if loss is None else loss, p["rank"])

    best = min(points, key=order)
    return LoRASweep(best["rank"], best["lr"], points)


def accuracy_row(model, tokenizer, stages: Sequence[Stage],
                 limit: int | None = None) -> dict[str, float]:
    return {s.name: exact_match(model, tokenizer, s.test, limit=limit).accuracy for s in stages}


def train_sequential(model, tokenizer, stages: Sequence[Stage], config: SFTConfig | None = None,
                     progress: Progress | None = None, eval_limit: int | None = None
                     ) -> tuple[TrainResult, list[list[float]]]:
    """Naive sequential full fine-tuning: each skill on top of the previous model.

    Returns the final model and the accuracy matrix R[i][j] = test accuracy on skill j after
    training stage i, which shows how much earlier skills are forgotten.
    """
    matrix: list[list[float]] = []
    history = []
    for i, stage in enumerate(stages):
        sub = ((lambda s, f, i=i, n=stage.name: progress(f"{n}:{s}", (i + f) / len(stages)))
               if progress else None)
        result = fit_stage(model, tokenizer, stage, config, sub)
        history.append({k: v for k, v in result.metrics.items() if k != "history"})
        row = accuracy_row(model, tokenizer, stages, eval_limit)
        matrix.append([row[s.name] for s in stages])
    return TrainResult(model, {"stages": [s.name for s in stages], "per_stage": history}), matrix


def joint_rows(stages: Sequence[Stage], split: str, seed: int = 0) -> list[dict]:
    rows = [r for s in stages for r in getattr(s, split)]
    random.Random(seed).shuffle(rows)
    return rows


def replay_stages(stages: Sequence[Stage], rows: int, seed: int = 0) -> list[Stage]:
    """``stages`` with up to ``rows`` training rows of every earlier stage mixed into each one
    (picked and shuffled by ``seed``): sequential fine-tuning with a small replay buffer. The
    validation rows, and the rows DPO pairs (``own``), stay the stage's own."""
    rng = random.Random(seed)
    out = []
    for i, stage in enumerate(stages):
        replayed = [r for earlier in stages[:i]
                    for r in rng.sample(earlier.train, min(rows, len(earlier.train)))]
        train = list(stage.train) + replayed
        if replayed:
            rng.shuffle(train)
        out.append(replace(stage, train=train, own=stage.preference_rows))
    return out


def train_joint(model, tokenizer, stages: Sequence[Stage], config: SFTConfig | None = None,
                progress: Progress | None = None) -> TrainResult:
    """Multi-task joint training on every skill so far: the usual upper bound. Stages that ask
    for DPO get it after, their pairs pooled into one run (`prefer`)."""
    cfg = config or SFTConfig()
    result = train_sft(model, tokenizer, joint_rows(stages, "train", cfg.seed),
                       joint_rows(stages, "validation", cfg.seed), cfg, progress)
    dpo = prefer(model, tokenizer, stages, progress)
    return result if dpo is None else TrainResult(model, {**result.metrics, "dpo": dpo})
