"""The trainer registry and `run_training`: plan, load, graft, train, save atomically or nothing."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field

from ..atomic import publish_dir
from ..curriculum.validate import load_rows
from ..errors import ConfigError
from ..fingerprint import fingerprint_checkpoint
from ..models import load_causal_lm, pick_device
from ..packs.format import read_pack
from ..packs.graft import grafted_all
from ..registry import Registry
from .backends import BackendName, choose_backend, get_backend
from .baselines import LoRAConfig, train_lora
from .data import STOP
from .distill import Checker, GenerationConfig, distill, skill_checker
from .dpo import DPOConfig, preference_pairs
from .memory import (
    MemoryPlan,
    ModelShape,
    PeakMemory,
    available_bytes,
    estimate,
    fitting_batch_size,
    gib,
    refuse_unless_fits,
)
from .protocol import Backend, Trainer
from .sft import Progress, SFTConfig, TrainResult, clone_model

log = logging.getLogger(__name__)


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
    backend: BackendName = Field(default="auto", description=(
        "The loop every stage runs on: builtin, trl, or auto (builtin for a small model on "
        "the CPU, TRL otherwise; training.backends.choose_backend)."))
    gradient_checkpointing: bool = Field(default=False, description=(
        "Recompute activations in the backward pass: less memory, about a third more "
        "compute; the memory plan names it when a job does not fit without it."))


def _checker(job: TrainJob) -> Checker | None:
    """The skill's rule-based check (`distill.skill_checker`) over the job's rows."""
    if not job.verify:
        return None
    rows = load_rows(job.train_path) + (load_rows(job.val_path) if job.val_path else [])
    return skill_checker(job.skill, rows)


def _load(path: Path, device: str | None):
    model, tok = load_causal_lm(path, device=device, fingerprint=False)
    return model, tok


def _load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def _stage(progress: Progress | None, name: str) -> Progress | None:
    return (lambda s, f: progress(f"{name}:{s}", f)) if progress else None


def _backend(job: TrainJob, model) -> Backend:
    """The job's backend; ``auto`` resolved from the loaded model (`run_training` resolves it
    before loading and hands the trainers a job that names its choice)."""
    name = job.backend
    if name == "auto":
        device = next(model.parameters()).device
        name = choose_backend("auto", sum(p.numel() for p in model.parameters()), device).chosen
    return get_backend(name, gradient_checkpointing=job.gradient_checkpointing)


class SFT:
    name = "sft"
    description = "Full fine-tuning on the ground-truth answers."

    def train(self, job: TrainJob, model, tok, progress: Progress | None) -> TrainResult:
        val = load_rows(job.val_path) if job.val_path else None
        return _backend(job, model).sft(model, tok, load_rows(job.train_path), val, job.sft,
                                        progress)


def _distill(job: TrainJob, model, tok, progress: Progress | None,
             rejected: dict[str, list[str]] | None = None) -> TrainResult:
    if job.source_dir is None:
        raise ConfigError("Distillation needs a source model; "
                          "pass source_dir (e.g. the zoo's GPT-2).")
    source, source_tok = _load(job.source_dir, job.device)
    val = [r["prompt"] for r in load_rows(job.val_path)] if job.val_path else None
    return distill(source, source_tok, model, tok, [r["prompt"] for r in load_rows(job.train_path)],
                   val, checker=_checker(job), generation=job.generation, sft=job.sft,
                   progress=progress, rejected=rejected, backend=_backend(job, model))


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
        result = _backend(job, model).dpo(model, reference, tok, pairs, job.dpo,
                                          _stage(progress, "dpo"))
        sft_metrics = {k: v for k, v in first.metrics.items() if k != "history"}
        return TrainResult(result.model, {**sft_metrics, "dpo": {**result.metrics, "pairs": stats}})


class LoRA:
    name = "lora"
    description = "A PEFT LoRA adapter at the configured rank, merged into the base."

    def train(self, job: TrainJob, model, tok, progress: Progress | None) -> TrainResult:
        val = load_rows(job.val_path) if job.val_path else None
        return train_lora(model, tok, load_rows(job.train_path), val, job.lora, progress,
                          backend=_backend(job, model))


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


def longest_row(job: TrainJob, tok) -> tuple[int, int]:
    """(longest prompt, longest answer + stop string) of the training rows, in tokens."""
    rows = load_rows(job.train_path)
    if not rows:
        return 1, 1
    prompts = tok([r["prompt"] for r in rows], add_special_tokens=False)["input_ids"]
    answers = tok([r["answer"] + STOP for r in rows], add_special_tokens=False)["input_ids"]
    return max(map(len, prompts)), max(map(len, answers))


def plan_memory(method: str, job: TrainJob, shape: ModelShape, backend: str,
                device: torch.device, longest: tuple[int, int], *,
                batch_size: int | None = None,
                gradient_checkpointing: bool | None = None) -> MemoryPlan:
    """The peak of the method's stages (SFT; then DPO for dpo, with its reference and chosen +
    rejected per step), at the job's settings or at the batch size / checkpointing given.

    Sequences are the longest prompt plus the longest answer (``longest_row``), or plus the
    source's longest answer (``generation.max_new_tokens``) when a source writes them.
    """
    sourced = method in ("distill", "dpo") and job.source_dir is not None
    prompt, answer = longest
    generated = max(answer, job.generation.max_new_tokens + 1)
    gc = job.gradient_checkpointing if gradient_checkpointing is None else gradient_checkpointing
    common = {"device": str(device), "backend": backend, "gradient_checkpointing": gc,
              "mixed_bf16": (backend == "trl" and device.type == "cuda"
                             and torch.cuda.is_bf16_supported())}
    plans = [estimate(shape, stage="sft", batch_size=batch_size or job.sft.batch_size,
                      seq_len=min(job.sft.max_length, prompt + (generated if sourced else answer)),
                      scored_len=generated if sourced else answer,
                      processes=int(os.environ.get("WORLD_SIZE", "1")),
                      # TRL's callback keeps the best weights in CPU memory, not on a GPU
                      keep_best=(job.val_path is not None
                                 and (backend == "builtin" or device.type == "cpu")),
                      other_weights=(ModelShape.of_folder(job.source_dir).weight_bytes
                                     if sourced else 0), **common)]
    if method == "dpo":  # rejected answers are the model's or the source's generations
        plans.append(estimate(shape, stage="dpo", batch_size=2 * (batch_size or job.dpo.batch_size),
                              seq_len=min(job.dpo.max_length, prompt + generated),
                              reference=True, **common))
    return max(plans, key=lambda p: p.total)


def _check_memory(method: str, job: TrainJob, shape: ModelShape, backend: str,
                  device: torch.device, tok) -> MemoryPlan:
    """The job's plan; one ConfigError line naming the setting to change when it cannot fit."""
    longest = longest_row(job, tok)
    plan = plan_memory(method, job, shape, backend, device, longest)
    free = available_bytes(device)
    if plan.total > free:
        def at(b: int) -> MemoryPlan:
            return plan_memory(method, job, shape, backend, device, longest, batch_size=b,
                               gradient_checkpointing=True)

        refuse_unless_fits(
            plan, free, what=f"Training {method} on {job.base_dir.name!r}",
            with_checkpointing=plan_memory(method, job, shape, backend, device, longest,
                                           gradient_checkpointing=True),
            fitting_batch=fitting_batch_size(at, plan.batch_size, free))
    return plan


def run_training(method: str, job: TrainJob, progress: Progress | None = None) -> dict:
    """Plan the memory, load the base, add ``job.graft``'s packs, train with ``method``, take the
    packs out again, and save the result; return the metrics, the folder and its fingerprint.

    ``auto`` is resolved to a backend first, and a job that cannot fit the device is refused
    before anything is loaded; both are recorded in the metrics (``backend``, ``memory``:
    the estimate beside the measured peak). Training moves the grafted weights; subtracting
    the packs afterwards leaves base + the new skill's delta, which is what a pack of this
    skill must hold. Any failure (bad data, NaN loss, a cancel) raises before anything is
    written.
    """
    trainer = get_trainer(method)
    device = pick_device(job.device)
    shape = ModelShape.of_folder(job.base_dir)
    choice = choose_backend(job.backend, shape.params, device)
    get_backend(choice.chosen)  # TRL asked for and not installed: one line, nothing loaded
    job = job.model_copy(update={"backend": choice.chosen})
    tok = _load_tokenizer(job.base_dir)
    plan = _check_memory(method, job, shape, choice.chosen, device, tok)
    with PeakMemory(device) as peak:
        model, tok = _load(job.base_dir, job.device)
        packs = [read_pack(g.path) for g in job.graft]
        with grafted_all(model, packs, [g.scale for g in job.graft], exact=False):
            result = trainer.train(job, model, tok, progress)
    before = f"; the process held {gib(peak.before)} before" if peak.before is not None else ""
    log.info("%s on %s with %s: memory estimated %s, measured peak %s (%s)%s", method,
             job.base_dir.name, choice.chosen, gib(plan.total), gib(peak.bytes or 0), peak.method,
             before)
    metrics = {k: v for k, v in result.metrics.items() if k not in ("history", "distilled_rows")}
    metrics["backend"] = choice.as_json()
    metrics["memory"] = {**plan.as_json(), **peak.as_json()}
    if int(os.environ.get("RANK", "0")) != 0:
        # A rank of a launched DDP run (training.launch): every rank holds the same weights
        # and rank 0 saves them.
        return {"method": method, "out_dir": None, "fingerprint": None, **metrics}
    result.model.to("cpu")
    result.model.generation_config.pad_token_id = tok.pad_token_id
    folder, fingerprint = save_model_atomically(result.model, tok, job.out_dir,
                                                content_addressed=job.content_addressed)
    if progress:
        progress("save", 1.0)
    return {"method": method, "out_dir": str(folder), "fingerprint": fingerprint, **metrics}
