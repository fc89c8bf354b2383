"""The zoo's three architectures, randomly initialised: a Llama target, GPT-2 and Qwen2 sources."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from ..training.sft import SFTConfig


class ModelSpec(BaseModel):
    """Size of one tiny model and how long it is trained while the zoo is built."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    hidden: int = Field(default=128, gt=0)
    layers: int = Field(default=2, gt=0)
    heads: int = Field(default=4, gt=0)
    intermediate: int = Field(default=384, gt=0)
    max_positions: int = Field(default=64, gt=8)
    train: SFTConfig = SFTConfig()


def _special_ids(tokenizer) -> dict:
    return {"pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id}


def llama_model(spec: ModelSpec, tokenizer):
    """The target: a Llama over the char-level tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=spec.hidden, num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads, num_key_value_heads=spec.heads,
        intermediate_size=spec.intermediate, max_position_embeddings=spec.max_positions,
        tie_word_embeddings=False, **_special_ids(tokenizer),
    )
    return LlamaForCausalLM(cfg)


def gpt2_model(spec: ModelSpec, tokenizer):
    """A GPT-2 source: learned positions, LayerNorm, fused QKV (``Conv1D``), GELU."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(
        vocab_size=len(tokenizer), n_embd=spec.hidden, n_layer=spec.layers, n_head=spec.heads,
        n_inner=spec.intermediate, n_positions=spec.max_positions, resid_pdrop=0.0,
        embd_pdrop=0.0, attn_pdrop=0.0, **_special_ids(tokenizer),
    )
    return GPT2LMHeadModel(cfg)


def qwen2_model(spec: ModelSpec, tokenizer):
    """A Qwen2 source: rotary positions, RMSNorm, grouped-query attention with biased QKV
    (half as many key/value heads as query heads), SwiGLU, tied embeddings."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=spec.hidden, num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads, num_key_value_heads=max(1, spec.heads // 2),
        intermediate_size=spec.intermediate, max_position_embeddings=spec.max_positions,
        tie_word_embeddings=True, use_sliding_window=False, attention_dropout=0.0,
        **_special_ids(tokenizer),
    )
    return Qwen2ForCausalLM(cfg)
