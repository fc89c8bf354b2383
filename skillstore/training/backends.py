"""Training backends (the built-in AdamW loop, TRL on accelerate) and how `auto` picks one."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar, Literal

import torch

from ..errors import ConfigError
from ..registry import Registry
from .dpo import DPOConfig, train_dpo
from .protocol import Backend
from .sft import Progress, SFTConfig, TrainResult, train_sft

BackendName = Literal["auto", "builtin", "trl"]

#: `auto` trains models below this many parameters on the CPU with the built-in loop, and
#: everything else (larger models, any GPU) with TRL. Measured side by side on this project's
#: 2-core CPU (docs/learning.md, "Choosing the backend"): the built-in loop took 1.2-2x less
#: time per step at 0.45 M, 7.3 M and 58 M parameters (and 3-6 s less start-up); at 134 M the
#: two were level. The threshold sits between.
AUTO_CPU_MAX_BUILTIN_PARAMS = 100_000_000


def trl_missing() -> str | None:
    """Why TRL cannot be imported here, or None when it can (``import trl`` is lazy and cheap)."""
    try:
        import trl  # noqa: F401
    except ImportError as exc:
        return f"TRL is not installed ({exc})"
    return None


@dataclass(frozen=True)
class Builtin:
    """The hand-written loop of `train_sft` and `train_dpo`: one process, one device."""

    name: ClassVar[str] = "builtin"
    description: ClassVar[str] = ("The built-in AdamW loop (training/sft.py, training/dpo.py): "
                                  "least overhead per step, one device.")
    gradient_checkpointing: bool = False

    def missing(self) -> str | None:
        return None

    def sft(self, model, tok, train_rows: list[dict], val_rows: list[dict] | None,
            config: SFTConfig, progress: Progress | None) -> TrainResult:
        return train_sft(model, tok, train_rows, val_rows, config, progress,
                         gradient_checkpointing=self.gradient_checkpointing)

    def dpo(self, model, reference, tok, pairs: list[dict], config: DPOConfig,
            progress: Progress | None) -> TrainResult:
        return train_dpo(model, reference, tok, pairs, config, progress,
                         gradient_checkpointing=self.gradient_checkpointing)


@dataclass(frozen=True)
class TRL:
    """TRL's SFTTrainer and DPOTrainer on accelerate: bf16 on a GPU, the fused LM head."""

    name: ClassVar[str] = "trl"
    description: ClassVar[str] = ("TRL's SFTTrainer / DPOTrainer on accelerate: bf16 mixed "
                                  "precision on a GPU, a fused LM head, activation checkpointing.")
    gradient_checkpointing: bool = False

    def missing(self) -> str | None:
        return trl_missing()

    # trl_backend imports TRL, datasets and transformers' Trainer (seconds); only a job that
    # runs on TRL pays for them.
    def sft(self, model, tok, train_rows: list[dict], val_rows: list[dict] | None,
            config: SFTConfig, progress: Progress | None) -> TrainResult:
        from .trl_backend import trl_sft

        return trl_sft(model, tok, train_rows, val_rows, config, progress,
                       gradient_checkpointing=self.gradient_checkpointing)

    def dpo(self, model, reference, tok, pairs: list[dict], config: DPOConfig,
            progress: Progress | None) -> TrainResult:
        from .trl_backend import trl_dpo

        return trl_dpo(model, reference, tok, pairs, config, progress,
                       gradient_checkpointing=self.gradient_checkpointing)


BACKENDS: Registry[Backend] = Registry("training backend", [Builtin(), TRL()])
BUILTIN: Backend = BACKENDS["builtin"]


def get_backend(name: str, *, gradient_checkpointing: bool = False) -> Backend:
    """The backend called ``name``, configured; a ConfigError line when it cannot run here."""
    backend = replace(BACKENDS[name], gradient_checkpointing=gradient_checkpointing)
    why = backend.missing()
    if why:
        raise ConfigError(f"Training backend {name!r} cannot run here: {why}; install it "
                          "(pip install trl) or choose --backend builtin.")
    return backend


@dataclass(frozen=True)
class BackendChoice:
    """What was asked, what runs, and why: recorded with the job's train step."""

    requested: str
    chosen: str
    reason: str

    def as_json(self) -> dict:
        return {"requested": self.requested, "chosen": self.chosen, "reason": self.reason}


def choose_backend(requested: str, n_params: int, device: torch.device | str) -> BackendChoice:
    """Resolve ``auto``: the built-in loop for a model under AUTO_CPU_MAX_BUILTIN_PARAMS on the
    CPU, TRL otherwise (the built-in loop when TRL is not installed). Any other name is kept."""
    device = torch.device(device)
    if requested != "auto":
        BACKENDS[requested]  # an unknown name is the registry's "did you mean" line
        return BackendChoice(requested, requested, "asked for")
    small = n_params < AUTO_CPU_MAX_BUILTIN_PARAMS
    if device.type == "cpu" and small:
        return BackendChoice("auto", "builtin", f"{n_params:,} parameters on the CPU, under "
                             f"{AUTO_CPU_MAX_BUILTIN_PARAMS:,}")
    where = (f"{n_params:,} parameters, at least {AUTO_CPU_MAX_BUILTIN_PARAMS:,}" if not small
             else f"device {device.type}")
    why = trl_missing()
    if why:
        return BackendChoice("auto", "builtin", f"{where}, but {why}")
    return BackendChoice("auto", "trl", where)
