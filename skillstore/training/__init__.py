"""Trainers: SFT, cross-tokenizer distillation, DPO, and the LoRA / sequential / joint baselines,
on the built-in loop or TRL."""

from .backends import BACKENDS, get_backend
from .baselines import LoRAConfig, Stage, train_joint, train_lora, train_sequential
from .distill import GenerationConfig, distill, source_rows
from .dpo import DPOConfig, dpo_loss, preference_pairs, train_dpo
from .generate import ExactMatch, exact_match, generate_answers
from .run import TRAINERS, TrainJob, get_trainer, run_training, save_model_atomically
from .sft import SFTConfig, TrainResult, train_sft

__all__ = [
    "BACKENDS", "TRAINERS", "DPOConfig", "ExactMatch", "GenerationConfig", "LoRAConfig",
    "SFTConfig", "Stage", "TrainJob", "TrainResult", "distill", "dpo_loss", "exact_match",
    "generate_answers", "get_backend", "get_trainer", "preference_pairs", "run_training",
    "save_model_atomically", "source_rows", "train_dpo", "train_joint", "train_lora",
    "train_sequential", "train_sft",
]
