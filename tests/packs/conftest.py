"""Tiny base/fine-tuned checkpoint pairs (Llama and GPT-2) built locally in milliseconds."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from skillstore.packs import compress_checkpoint, load_policy

# Tiny matmuls on a shared 2-core machine spend ~1000x longer in thread hand-offs than in work.
torch.set_num_threads(1)

# A tiny pair's dense fp16 delta is about 50 KB and a pack's header about 1.6 KB of it, which
# the budget counts: compact's 5% leaves such a pack its norms and a few matrices. Tests that
# need a compact pack with every role use the preset at a budget the tiny pairs can hold.
TINY_COMPACT = load_policy("compact", budget=0.15)


def tiny_llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=False)
    return LlamaForCausalLM(cfg).eval()


def tiny_gpt2(seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=96, n_embd=32, n_layer=2, n_head=4, n_positions=64)
    return GPT2LMHeadModel(cfg).eval()


def finetune_like(model, seed: int = 1, rank: int = 4, size: float = 0.05, rows: int = 10):
    """Perturb a model the way fine-tuning does: low rank plus noise, a few embedding rows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and ("wte" in name or "embed_tokens" in name or "lm_head" in name
                                 or "wpe" in name):
                idx = torch.randperm(p.shape[0], generator=gen)[:rows]
                p[idx] += size * torch.randn(rows, p.shape[1], generator=gen)
            elif p.dim() == 2:
                m, n = p.shape
                low = torch.randn(m, rank, generator=gen) @ torch.randn(rank, n, generator=gen)
                low *= size * p.norm() / low.norm()
                p += low + 0.002 * torch.randn(m, n, generator=gen) * p.abs().mean()
            else:
                p += 0.01 * torch.randn(p.shape, generator=gen)
    return model


def save_pair(root: Path, build) -> tuple[Path, Path]:
    base, tuned = root / "base", root / "tuned"
    build(0).save_pretrained(str(base))
    finetune_like(build(0)).save_pretrained(str(tuned))
    return base, tuned


@pytest.fixture(scope="session")
def llama_pair(tmp_path_factory) -> tuple[Path, Path]:
    return save_pair(tmp_path_factory.mktemp("llama"), tiny_llama)


@pytest.fixture(scope="session")
def gpt2_pair(tmp_path_factory) -> tuple[Path, Path]:
    return save_pair(tmp_path_factory.mktemp("gpt2"), tiny_gpt2)


@pytest.fixture(scope="session")
def compact_pack(llama_pair, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("packs") / "compact.safetensors"
    compress_checkpoint(*llama_pair, TINY_COMPACT, out)
    return out


def logits(model, seed: int = 3) -> torch.Tensor:
    ids = torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(input_ids=ids).logits
