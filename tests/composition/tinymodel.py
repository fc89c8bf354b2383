"""A 2-layer Llama with hidden size 32 on the zoo's character tokenizer, built in milliseconds."""

from __future__ import annotations

from pathlib import Path

import torch


def tiny_tokenizer():
    from skillstore.zoo.tokenizers import char_tokenizer

    return char_tokenizer()


def tiny_llama(tokenizer, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, tie_word_embeddings=False,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    model = LlamaForCausalLM(config)
    model.eval()
    return model


def perturbed_copy(model, seed: int, names: tuple[str, ...], scale: float = 0.05):
    """A 'fine-tuned' copy: low-rank changes to the named weights."""
    import copy

    tuned = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in names:
            w = tuned.get_parameter(name)
            if w.dim() == 2:
                u = torch.randn(w.shape[0], 2, generator=g)
                v = torch.randn(2, w.shape[1], generator=g)
                w.add_(scale * u @ v)
            else:
                w.add_(scale * torch.randn(w.shape, generator=g))
    return tuned


def save(model, tokenizer, path: Path) -> Path:
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path
