"""Loading and saving Hugging Face causal LMs, with their base fingerprint attached."""

from __future__ import annotations

from pathlib import Path

import torch

from .errors import NotFoundError
from .fingerprint import fingerprint_checkpoint

FINGERPRINT_ATTR = "skillstore_fingerprint"


def pick_device(device: str | None = None) -> torch.device:
    """The device to run on: the one asked for, else CUDA when present, else the CPU."""
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_model(model_dir: str | Path, *, dtype: torch.dtype | None = None,
               device: str | None = None, fingerprint: bool = True):
    """Load a causal LM from a checkpoint folder, without its tokenizer; no network, no pickle.

    The model carries the checkpoint fingerprint as ``model.skillstore_fingerprint`` so that
    grafting can check a pack's base without rehashing the weights.
    """
    from transformers import AutoModelForCausalLM

    root = Path(model_dir)
    if not (root / "config.json").is_file():
        raise NotFoundError(
            f"{str(root)!r} is not a Hugging Face model folder (no config.json); "
            "pass a directory written by save_pretrained."
        )
    model = AutoModelForCausalLM.from_pretrained(
        str(root), dtype=dtype or "auto", use_safetensors=True, local_files_only=True
    )
    model.to(pick_device(device))
    model.eval()
    if fingerprint:
        setattr(model, FINGERPRINT_ATTR, fingerprint_checkpoint(root))
    return model


def load_causal_lm(model_dir: str | Path, *, dtype: torch.dtype | None = None,
                   device: str | None = None, fingerprint: bool = True):
    """Load (model, tokenizer) from a checkpoint folder; see load_model for the model."""
    from transformers import AutoTokenizer

    model = load_model(model_dir, dtype=dtype, device=device, fingerprint=fingerprint)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer
