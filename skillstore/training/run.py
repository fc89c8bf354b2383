"""The trainer registry and `run_training`: load, graft, train, save atomically or save nothing."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from ..atomic import publish_dir
from ..curriculum.skills import GENERAL_SKILLS, SKILLS
from ..curriculum.validate import load_rows
from ..errors import ConfigError
from ..fingerprint import fingerprint_checkpoint
from ..models import load_causal_lm
from ..packs.format import read_pack
from ..packs.graft import grafted_all
from ..registry import Registry
from .baselines import LoRAConfig, train_lora
from .distill import Checker, GenerationConfig, distill
from .dpo import DPOConfig, preference_pairs, train_dpo
from .protocol import Trainer
from .sft import Progress, SFTConfig, TrainResult, clone_model, train_sft


class GraftSpec(BaseModel):
    """A pack to add to the base before training (a job that starts from the current state)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: Path
    scale: float = 1.0


class TrainJob(BaseModel):
    """What one training run needs: the base, the data, where to write, and the settings."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    base_dir: Path
    train_path: Path
    val_path: Path | None = None
    out_dir: Path
    content_addressed: bool = Field(default=False, description=(
        "Save under out_dir/<first 32 hex of the checkpoint fingerprint>, an existing copy "
        "winning, instead of at out_dir itself."))
    graft: tuple[GraftSpec, ...] = ()
    source_dir: Path | None = None
    skill: str | None = None
    verify: bool = Field(default=True, description=(
        "Keep only source answers that the skill's checker accepts: the curriculum's checker, "
        "else equality with the reference answer."))
    sft: SFTConfig = SFTConfig()
    generation: GenerationConfig = GenerationConfig()
    dpo: DPOConfig = DPOConfig()
    lora: LoRAConfig = LoRAConfig()
    device: str | None = None


def _checker(job: TrainJob) -> Checker | None:
    """The skill's rule-based check: the curriculum's checker, else the reference answer."""
    if not job.verify:
        return None
    skill = SKILLS.get(job.skill or "") or GENERAL_SKILLS.get(job.skill or "")
    if skill is not None:
        return skill.check
    truth = {r["prompt"]: r["answer"] for r in load_rows(job.train_path)}
    if job.val_path:
        truth.update({r["prompt"]: r["answer"] for r in load_rows(job.val_path)})
    return lambda prompt, answer: truth.get(prompt) == answer


def _load(path: Path, device: str | None):
    model, tok = load_causal_lm(path, device=device, fingerprint=False)
    return model, tok


def _stage(progress: Progress | None, name: str) -> Progress | None:
    return (lambda s, f: progress(f"{name}:{s}", f)) if progress else None


class SFT:
    name = "sft"
    description = "Full fine-tuning on the ground-truth answers."

    def train(self, job: TrainJob, model, tok, progress: Progress | None) -> TrainResult:
        val = load_rows(job.val_path) if job.val_path else None
        return train_sft(model, tok, load_rows(job.train_path), val, job.sft, progress)


def _distill(job: TrainJob, model, tok, progress: Progress | None,
             rejected: dict[str, list[str]] | None = None) -> TrainResult:
    if job.source_dir is None:
        raise ConfigError("Distillation needs a source model; "
                          "pass source_dir (e.g. the zoo's GPT-2).")
    source, source_tok = _load(job.source_dir, job.device)
    val = [r["prompt"] for r in load_rows(job.val_path)] if job.val_path else None
    return distill(source, source_tok, model, tok, [r["prompt"] for r in load_rows(job.train_path)],
                   val, checker=_checker(job), generation=job.generation, sft=job.sft,
                   progress=progress, rejected=rejected)


class Distill:
    name = "distill"
    description = ("The source model answers, the skill's checker filters, "
                   "the target learns the text.")

    def train(self, job: TrainJob, model, tok, progress: Progress | None) -> TrainResult:
        return _distill(job, model, tok, progress)


class DPO:
    name = "dpo"
    description = ("SFT (on the source's verified answers when a source is given), then DPO: "
                   "verified answers are chosen, answers the checker rejects are rejected.")

    def train(self, job: TrainJob, model, tok, progress: Progress | None) -> TrainResult:
        source_wrong: dict[str, list[str]] = {}
        if job.source_dir:
            first = _distill(job, model, tok, _stage(progress, "sft"), rejected=source_wrong)
        else:
            first = SFT().train(job, model, tok, _stage(progress, "sft"))
        rows = first.metrics.pop("distilled_rows", None) or load_rows(job.train_path)
        checker = _checker(job) or (
            lambda p, a, ans={r["prompt"]: r["answer"] for r in rows}: ans.get(p) == a)
        reference = clone_model(model)  # the SFT model is DPO's frozen reference
        pairs, stats = preference_pairs(model, tok, rows, checker, candidates=source_wrong,
                                        config=job.dpo)
        result = train_dpo(model, reference, tok, pairs, job.dpo, _stage(progress, "dpo"))
        sft_metrics = {k: v for k, v in first.metrics.items() if k != "history"}
        return TrainResult(result.model, {**sft_metrics, "dpo": {**result.metrics, "pairs": stats}})


class LoRA:
    name = "lora"
    description = "A PEFT LoRA adapter at the configured rank, merged into the base."

    def train(self, job: TrainJob, model, tok, progress: Progress | None) -> TrainResult:
        val = load_rows(job.val_path) if job.val_path else None
        return train_lora(model, tok, load_rows(job.train_path), val, job.lora, progress)


TRAINERS: Registry[Trainer] = Registry("trainer", [SFT(), Distill(), DPO(), LoRA()])


def get_trainer(name: str) -> Trainer:
    return TRAINERS[name]


def save_model_atomically(model, tokenizer, out_dir: Path, *,
                          content_addressed: bool = False) -> tuple[Path, str]:
    """Write beside the destination, then rename: a crash never leaves a half-written model.

    Returns (folder, fingerprint). ``content_addressed`` names the folder by the checkpoint's
    fingerprint inside ``out_dir`` and keeps an existing copy; otherwise ``out_dir`` is replaced.
    """
    out_dir = Path(out_dir)
    where = out_dir if content_addressed else out_dir.parent
    tmp = where / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        fingerprint = fingerprint_checkpoint(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    final = out_dir / fingerprint.removeprefix("sha256:")[:32] if content_addressed else out_dir
    return publish_dir(tmp, final, replace=not content_addressed), fingerprint


def run_training(method: str, job: TrainJob, progress: Progress | None = None) -> dict:
    """Load the base, add ``job.graft``'s packs, train with ``method``, take the packs out
    again, and save the result; return the metrics, the folder and its fingerprint.

    Training moves the grafted weights; subtracting the packs afterwards leaves base + the new
    skill's delta, which is what a pack of this skill must hold. Any failure (bad data, NaN
    loss, a cancel) raises before anything is written.
    """
    trainer = get_trainer(method)
    model, tok = _load(job.base_dir, job.device)
    packs = [read_pack(g.path) for g in job.graft]
    with grafted_all(model, packs, [g.scale for g in job.graft], exact=False):
        result = trainer.train(job, model, tok, progress)
    metrics = {k: v for k, v in result.metrics.items() if k not in ("history", "distilled_rows")}
    result.model.to("cpu")
    result.model.generation_config.pad_token_id = tok.pad_token_id
    folder, fingerprint = save_model_atomically(result.model, tok, job.out_dir,
                                                content_addressed=job.content_addressed)
    if progress:
        progress("save", 1.0)
    return {"method": method, "out_dir": str(folder), "fingerprint": fingerprint, **metrics}
