"""Supervised fine-tuning: loss on answer tokens, AdamW, warmup + cosine, early stopping."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from pydantic import BaseModel, ConfigDict, Field

from ..errors import TrainingError
from .data import Example, batch_plan, batches, collate, encode_rows, pad_id_of
from .loss import answer_loss

Progress = Callable[[str, float], None]


class SFTConfig(BaseModel):
    """Hyper-parameters of one SFT run: ``max_steps`` bounds it, early stopping may end it first."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    lr: float = Field(default=3e-3, gt=0)
    max_steps: int = Field(default=1200, gt=0)
    batch_size: int = Field(default=32, gt=0)
    warmup_frac: float = Field(default=0.05, ge=0, lt=1)
    min_lr_frac: float = Field(default=0.1, ge=0, le=1)
    weight_decay: float = Field(default=0.0, ge=0)
    grad_clip: float = Field(default=1.0, gt=0)
    eval_every: int = Field(default=100, gt=0)
    patience: int = Field(default=5, ge=1,
                          description="Evaluations without improvement before stopping.")
    min_delta: float = Field(default=1e-4, ge=0)
    stop_loss: float = Field(default=0.005, ge=0, description=(
        "Stop once the validation loss per answer token is at or below this: the skill is "
        "learned, and waiting out the patience would only spend time. 0 turns it off."))
    max_length: int = Field(default=128, gt=1)
    seed: int = 0


@dataclass
class TrainResult:
    """The trained model (in memory, not saved) and what happened on the way."""

    model: torch.nn.Module
    metrics: dict = field(default_factory=dict)


class EarlyStopping:
    """The validation rule both SFT loops follow: keep the weights of the best validation loss
    (better by more than ``min_delta``), stop after ``patience`` evaluations without one, or
    once the loss is at or below ``stop_loss``. ``on_cpu`` keeps the best weights in CPU
    memory instead of beside the model (the TRL loop's choice, off the GPU)."""

    def __init__(self, cfg: SFTConfig, *, on_cpu: bool = False):
        self.patience, self.min_delta, self.stop_loss = cfg.patience, cfg.min_delta, cfg.stop_loss
        self.on_cpu = on_cpu
        self.best, self.bad = math.inf, 0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.reason: str | None = None

    def update(self, val_loss: float, step: int, model) -> str | None:
        """Judge one validation loss; the reason to stop now (``patience``, ``stop_loss``) or
        None. A loss that is not finite raises: nothing is saved."""
        if not math.isfinite(val_loss):
            raise TrainingError(f"Validation loss became {val_loss} at step {step}; nothing "
                                "was saved. Lower the learning rate.")
        if val_loss < self.best - self.min_delta:
            self.best, self.bad = val_loss, 0
            self.best_state = {k: (t.detach().to("cpu", copy=True) if self.on_cpu
                                   else t.detach().clone())
                               for k, t in model.state_dict().items()}
        else:
            self.bad += 1
            if self.bad >= self.patience:
                self.reason = "patience"
        if val_loss <= self.stop_loss:
            self.reason = "stop_loss"
        return self.reason

    def restore(self, model) -> None:
        """Load the best weights seen, if validation ran."""
        if self.best_state is not None:
            model.load_state_dict(self.best_state)

    @property
    def best_val_loss(self) -> float | None:
        return self.best if self.best_state is not None else None


def lr_lambda(step: int, total: int, warmup: int, min_frac: float) -> float:
    """Linear warmup to 1, then cosine decay to ``min_frac`` at ``total`` steps."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_frac + (1 - min_frac) * 0.5 * (1 + math.cos(math.pi * progress))


def check_finite(loss: torch.Tensor, step: int, what: str = "SFT") -> None:
    if not torch.isfinite(loss):
        raise TrainingError(
            f"{what} loss became {loss.item()} at step {step}; nothing was saved. "
            "Lower the learning rate or check the data for empty answers."
        )


def adamw(params: list[torch.nn.Parameter], lr: float, weight_decay: float = 0.0):
    """AdamW as both backends run it: the fused kernel on the CPU and CUDA (the transformers
    Trainer's default, `adamw_torch_fused`), which also keeps no parameter-sized temporaries
    (the multi-tensor path holds one more copy of the weights during a step); the default
    implementation elsewhere."""
    fused = all(p.device.type in ("cpu", "cuda") for p in params) or None
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused)


@torch.no_grad()
def optimizer_step(loss: torch.Tensor, opt, sched, params, grad_clip: float) -> None:
    """One update: backward, clip the global gradient norm, step the optimizer and schedule."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, grad_clip)
    opt.step()
    sched.step()


@torch.no_grad()
def mean_loss(model, examples: list[Example], pad_id: int, batch_size: int) -> float:
    """Token-weighted mean loss over ``examples`` (answer tokens only)."""
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    total, count = 0.0, 0
    for chunk in batches(examples, batch_size, None):
        batch = collate(chunk, pad_id, device)
        n = int((batch["labels"][:, 1:] != -100).sum())
        total += float(answer_loss(model, batch)) * n
        count += n
    model.train(was)
    return total / max(1, count)


@contextmanager
def activation_checkpointing(model, enabled: bool) -> Iterator[None]:
    """Recompute each layer's activations in the backward pass while inside (less memory, about
    a third more compute); the model is left as it was found."""
    if not enabled:
        yield
        return
    # transformers 5 renamed gradient_checkpointing_* to activation_checkpointing_*.
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
        disable = model.activation_checkpointing_disable
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        disable = model.gradient_checkpointing_disable
    try:
        yield
    finally:
        disable()


def train_sft(model, tokenizer, train_rows: list[dict], val_rows: list[dict] | None = None,
              config: SFTConfig | None = None, progress: Progress | None = None, *,
              gradient_checkpointing: bool = False) -> TrainResult:
    """Fine-tune ``model`` in place on prompt/answer rows and return it with metrics.

    The best weights by validation loss are restored at the end. A NaN or infinite loss
    raises TrainingError; the caller saves nothing because nothing is returned.
    """
    with activation_checkpointing(model, gradient_checkpointing):
        return _train_sft(model, tokenizer, train_rows, val_rows, config or SFTConfig(), progress)


def _train_sft(model, tokenizer, train_rows: list[dict], val_rows: list[dict] | None,
               cfg: SFTConfig, progress: Progress | None) -> TrainResult:
    train = encode_rows(tokenizer, train_rows, cfg.max_length, "SFT training data")
    val = (encode_rows(tokenizer, val_rows, cfg.max_length, "SFT validation data")
           if val_rows else [])
    device = next(model.parameters()).device
    pad = pad_id_of(tokenizer)
    torch.manual_seed(cfg.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise TrainingError("The model has no trainable parameters; unfreeze it or use the "
                            "LoRA trainer.")
    opt = adamw(params, cfg.lr, cfg.weight_decay)
    warmup = max(1, int(cfg.warmup_frac * cfg.max_steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_lambda(s, cfg.max_steps, warmup, cfg.min_lr_frac))
    model.train()
    stopping = EarlyStopping(cfg)
    step, window = 0, []
    history: list[dict] = []
    t0 = time.perf_counter()
    for indices in batch_plan(len(train), cfg.batch_size, cfg.max_steps, cfg.seed):
        batch = collate([train[i] for i in indices], pad, device)
        loss = answer_loss(model, batch)
        check_finite(loss, step)
        optimizer_step(loss, opt, sched, params, cfg.grad_clip)
        step += 1
        window.append(float(loss.detach()))
        if step % cfg.eval_every == 0 or step == cfg.max_steps:
            entry = {"step": step, "train_loss": sum(window) / len(window)}
            window = []
            if val:
                entry["val_loss"] = mean_loss(model, val, pad, cfg.batch_size * 2)
                stopping.update(entry["val_loss"], step, model)
            history.append(entry)
        if progress:
            progress("train", step / cfg.max_steps)
        if stopping.reason:
            break
    stopping.restore(model)
    model.eval()
    metrics = {"steps": step, "seconds": time.perf_counter() - t0,
               "stopped_early": stopping.reason is not None, "stop_reason": stopping.reason,
               "best_val_loss": stopping.best_val_loss,
               "n_train": len(train), "n_val": len(val), "history": history,
               "backend": "builtin", "seed": cfg.seed,
               "config": cfg.model_dump()}  # what the trainer ran with, for the job's record
    return TrainResult(model, metrics)


def clone_model(model):
    """An independent copy of a model (a frozen reference, or a baseline that must not share
    weights)."""
    return copy.deepcopy(model)
