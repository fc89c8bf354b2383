"""The trainer registry and `run_training`: load, train, and save atomically, or save nothing."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from ..curriculum.skills import GENERAL_SKILLS, SKILLS
from ..curriculum.validate import load_rows
from ..errors import ConfigError, unknown_name
from .baselines import LoRAConfig, train_lora
from .distill import GenerationConfig, distill
from .dpo import DPOConfig, preference_pairs, train_dpo
from .sft import Progress, SFTConfig, TrainResult, clone_model, train_sft


class TrainJob(BaseModel):
    """What one training run needs: the base, the data, where to write, and the settings."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    base_dir: Path
    train_path: Path
    val_path: Path | None = None
    out_dir: Path
    source_dir: Path | None = None
    skill: str | None = None
    sft: SFTConfig = SFTConfig()
    generation: GenerationConfig = GenerationConfig()
    dpo: DPOConfig = DPOConfig()
    lora: LoRAConfig = LoRAConfig()
    device: str | None = None


def _checker(job: TrainJob):
    skill = SKILLS.get(job.skill or "") or GENERAL_SKILLS.get(job.skill or "")
    return skill.check if skill else None


def _load(path: Path, device: str | None):
    from ..models import load_causal_lm

    model, tok = load_causal_lm(path, device=device, fingerprint=False)
    return model, tok


class SFT:
    name = "sft"
    description = "Full fine-tuning on the ground-truth answers."

    def train(self, job: TrainJob, model, tok, progress: Progress | None) -> TrainResult:
        val = load_rows(job.val_path) if job.val_path else None
        return train_sft(model, tok, load_rows(job.train_path), val, job.sft, progress)


class Distill:
    name = "distill"
    description = "The source model answers, the skill's checker filters, the target learns the text."

    def train(self, job: TrainJob, model, tok, progress: Progress | None) -> TrainResult:
        if job.source_dir is None:
            raise ConfigError("Distillation needs a source model; pass source_dir (e.g. the zoo's GPT-2).")
        source, source_tok = _load(job.source_dir, job.device)
        val = [r["prompt"] for r in load_rows(job.val_path)] if job.val_path else None
        return distill(source, source_tok, model, tok, [r["prompt"] for r in load_rows(job.train_path)],
                       val, checker=_checker(job), generation=job.generation, sft=job.sft,
                       progress=progress)


class DPO:
    name = "dpo"
    description = "SFT (on the source's verified answers when a source is given), then DPO against it."

    def train(self, job: TrainJob, model, tok, progress: Progress | None) -> TrainResult:
        first = (Distill() if job.source_dir else SFT()).train(
            job, model, tok, (lambda s, f: progress(f"sft:{s}", f)) if progress else None)
        rows = first.metrics.pop("distilled_rows", None) or load_rows(job.train_path)
        checker = _checker(job) or (lambda p, a, ans={r["prompt"]: r["answer"] for r in rows}: ans.get(p) == a)
        reference = clone_model(model)
        pairs = preference_pairs(model, tok, rows, checker, seed=job.dpo.seed)
        result = train_dpo(model, reference, tok, pairs, job.dpo,
                           (lambda s, f: progress(f"dpo:{s}", f)) if progress else None)
        return TrainResult(result.model, {**{k: v for k, v in first.metrics.items() if k != "history"},
                                          "dpo": result.metrics})


class LoRA:
    name = "lora"
    description = "A PEFT LoRA adapter at the configured rank, merged into the base."

    def train(self, job: TrainJob, model, tok, progress: Progress | None) -> TrainResult:
        val = load_rows(job.val_path) if job.val_path else None
        return train_lora(model, tok, load_rows(job.train_path), val, job.lora, progress)


TRAINERS = {t.name: t for t in (SFT(), Distill(), DPO(), LoRA())}


def get_trainer(name: str):
    if name not in TRAINERS:
        raise unknown_name("trainer", name, tuple(TRAINERS))
    return TRAINERS[name]


def save_model_atomically(model, tokenizer, out_dir: Path) -> Path:
    """Write to a sibling temp folder, then rename: a crash never leaves a half-written model."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return out_dir


def run_training(method: str, job: TrainJob, progress: Progress | None = None) -> dict:
    """Load the base, train with ``method``, save to ``job.out_dir``; return the metrics.

    Any failure (bad data, NaN loss) raises before anything is written to ``out_dir``.
    """
    trainer = get_trainer(method)
    model, tok = _load(job.base_dir, job.device)
    result = trainer.train(job, model, tok, progress)
    metrics = {k: v for k, v in result.metrics.items() if k not in ("history", "distilled_rows")}
    result.model.to("cpu")
    save_model_atomically(result.model, tok, job.out_dir)
    if progress:
        progress("save", 1.0)
    return {"method": method, "out_dir": str(job.out_dir), **metrics}
