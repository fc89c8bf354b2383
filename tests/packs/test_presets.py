"""Presets in relative terms: the spectrum decides the ranks and bits, so a low-rank delta is
kept nearly exactly and a preset costs the same share of the delta at any width."""

import pytest
import torch

from skillstore.packs import compress_checkpoint, read_pack


def llama(hidden: int, inter: int, layers: int = 1, vocab: int = 256):
    from transformers import LlamaConfig, LlamaForCausalLM

    def build(seed: int = 0):
        torch.manual_seed(seed)
        cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter,
                          num_hidden_layers=layers, num_attention_heads=4,
                          num_key_value_heads=2, max_position_embeddings=64,
                          tie_word_embeddings=False)
        return LlamaForCausalLM(cfg).eval()
    return build


def add_delta(model, rank: int | None, noise: float = 1e-4, seed: int = 1):
    """Every matrix moves by a rank-``rank`` product with entries of about 0.01 plus noise
    of ``noise``; ``rank=None`` gives a full-rank delta with a flat spectrum."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() != 2:
                continue
            m, n = p.shape
            if rank is None:
                p += 0.01 * torch.randn(m, n, generator=gen)
            else:
                low = torch.randn(m, rank, generator=gen) @ torch.randn(rank, n, generator=gen)
                p += 0.01 * low / rank**0.5 + noise * torch.randn(m, n, generator=gen)
    return model


def save(root, build, rank):
    base, tuned = root / "base", root / "tuned"
    build(0).save_pretrained(str(base))
    add_delta(build(0), rank).save_pretrained(str(tuned))
    return base, tuned


@pytest.fixture(scope="module")
def rank4_pair(tmp_path_factory):
    """256 wide, so that its low rank is small against its matrices (the zoo model is 128)."""
    return save(tmp_path_factory.mktemp("rank4"), llama(256, 512), 4)


def test_compact_keeps_a_low_rank_delta_nearly_exactly(rank4_pair, tmp_path):
    s = compress_checkpoint(*rank4_pair, "compact", tmp_path / "c.safetensors")
    assert s.rel_error <= 0.05  # fixed ranks and 80% of the MLP's energy gave about 0.5
    assert max(s.rel_errors.values()) <= 0.05
    assert s.payload_bytes <= 0.5 * 0.05 * s.dense_fp16_bytes  # a fraction of the budget
    ranks = {sum(c for c, _ in e["info"]["blocks"])
             for e in read_pack(s.path).manifest["tensors"].values() if e["codec"] == "mplr"}
    assert ranks == {4}  # the spectrum's rank, not the preset's


@pytest.mark.parametrize("policy,share", [("compact", 0.05), ("balanced", 0.25)])
def test_a_preset_is_the_same_share_of_the_delta_at_any_width(policy, share, tmp_path):
    """On full-rank deltas the byte budget binds: the same share of the file on a model twice
    as wide (a fixed rank gave half the share there)."""
    ratios = []
    for hidden in (128, 256):
        pair = save(tmp_path / str(hidden), llama(hidden, 2 * hidden, vocab=128), None)
        s = compress_checkpoint(*pair, policy, tmp_path / f"{hidden}.safetensors")
        ratios.append(s.bytes / s.dense_fp16_bytes)
    assert all(0.9 * share <= r <= share for r in ratios), ratios
