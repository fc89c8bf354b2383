"""Hooked (unmerged) grafts: the merged model's outputs, weights never written, exact removal."""

import pytest
import torch

from skillstore.errors import ConfigError, FingerprintMismatchError
from skillstore.packs import active_packs, apply_pack, compress_checkpoint, grafted, unapply_pack
from skillstore.packs.export import load_base

from .conftest import finetune_like, logits, tiny_llama


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same(model, snap):
    for k, v in model.state_dict().items():
        assert torch.equal(v, snap[k]), k


def hook_count(model):
    return sum(len(m._forward_hooks) for m in model.modules())


@pytest.mark.parametrize("policy", ["compact", "balanced", "lossless"])
def test_hooked_llama_matches_merged_and_leaves_weights_alone(llama_pair, policy, tmp_path):
    pack = compress_checkpoint(*llama_pair, policy, tmp_path / "p.safetensors").path
    merged, hooked = load_base(llama_pair[0]), load_base(llama_pair[0])
    base_logits, snap = logits(hooked), snapshot(hooked)
    apply_pack(merged, pack, 0.7)
    apply_pack(hooked, pack, 0.7, mode="hooks")
    assert hook_count(hooked) > 0
    assert_same(hooked, snap)  # no weight was written
    want = logits(merged)
    assert (want - base_logits).abs().max() > 1e-3  # the pack does change the outputs
    assert torch.allclose(logits(hooked), want, atol=1e-5)
    unapply_pack(hooked, pack, 0.7)
    assert hook_count(hooked) == 0 and active_packs(hooked) == []
    assert torch.equal(logits(hooked), base_logits)


@pytest.mark.parametrize("policy", ["compact", "balanced"])
def test_hooked_gpt2_with_tied_head_and_conv1d_matches_merged(gpt2_pair, policy, tmp_path):
    pack = compress_checkpoint(*gpt2_pair, policy, tmp_path / "g.safetensors").path
    merged, hooked = load_base(gpt2_pair[0]), load_base(gpt2_pair[0])
    apply_pack(merged, pack)
    with grafted(hooked, pack, mode="hooks"):
        # the tied head is hooked as well as the embedding, or the logits would differ
        assert torch.allclose(logits(hooked), logits(merged), atol=1e-5)
    assert hook_count(hooked) == 0


def test_hooked_and_merged_packs_stack_and_unapply_in_any_order(llama_pair, tmp_path):
    other_dir = tmp_path / "other"
    finetune_like(tiny_llama(0), seed=7).save_pretrained(str(other_dir))
    a = compress_checkpoint(*llama_pair, "compact", tmp_path / "a.safetensors").path
    b = compress_checkpoint(llama_pair[0], other_dir, "compact", tmp_path / "b.safetensors").path
    both, model = load_base(llama_pair[0]), load_base(llama_pair[0])
    snap, base_logits = snapshot(model), logits(model)
    apply_pack(both, a)
    apply_pack(both, b, 0.5)
    apply_pack(model, a, mode="hooks")
    apply_pack(model, b, 0.5)  # merged on top of a hooked pack
    assert torch.allclose(logits(model), logits(both), atol=1e-5)
    unapply_pack(model, a)  # the hooked one out first: b stays merged
    unapply_pack(both, a)
    assert hook_count(model) == 0
    assert torch.allclose(logits(model), logits(both), atol=1e-5)
    unapply_pack(model, b, 0.5)
    assert_same(model, snap)
    assert torch.equal(logits(model), base_logits)


def test_unknown_mode_and_foreign_base_are_refused_before_any_hook(llama_pair, compact_pack):
    model = load_base(llama_pair[0])
    with pytest.raises(ConfigError, match="Unknown apply mode 'hook'.*hooks"):
        apply_pack(model, compact_pack, mode="hook")
    stranger = tiny_llama(seed=5)
    with pytest.raises(FingerprintMismatchError, match="apply it to its own base"):
        apply_pack(stranger, compact_pack, mode="hooks")
    assert hook_count(model) == hook_count(stranger) == 0
    assert active_packs(model) == active_packs(stranger) == []


class _TupleLinear(torch.nn.Linear):
    """A layer that returns a tuple, as some custom modules do."""

    def forward(self, x):
        return (super().forward(x),)


def test_hooks_refuse_buffers_and_non_tensor_outputs_with_the_fix():
    from skillstore.errors import ModelMismatchError
    from skillstore.packs.hooks import PackHooks
    from skillstore.packs.parts import DensePart

    model = torch.nn.Sequential(_TupleLinear(4, 4))
    model.register_buffer("table", torch.zeros(4))
    with pytest.raises(ModelMismatchError, match="'table' is a buffer.*mode='merge'"):
        PackHooks(model, {"table": model.table}, [DensePart("table", torch.ones(4))], 1.0)
    hooks = PackHooks(model, {"0.weight": model[0].weight},
                      [DensePart("0.weight", torch.ones(4, 4))], 1.0)
    with pytest.raises(ModelMismatchError, match="returns tuple, not a tensor.*mode='merge'"):
        model(torch.ones(1, 4))
    hooks.remove()
    assert isinstance(model(torch.ones(1, 4)), tuple)  # removed: the layer is itself again


def test_routing_a_batch_through_gpt2s_shared_position_embedding(gpt2_pair, tmp_path):
    """GPT-2 embeds positions once for the whole batch ((1, L) position ids). A pack with a
    `wpe` delta, routed per sample, must still give each sample its own packs: the routed
    batch equals the merged pack's logits (it raised "Routing weights cover 2 inputs but the
    batch has 1" before)."""
    from skillstore.packs.format import read_pack
    from skillstore.routing import DeltaBank, PackDeltas, RoutedModel

    pack_path = compress_checkpoint(*gpt2_pair, "lossless", tmp_path / "p.safetensors").path
    pack = read_pack(pack_path)
    parts = {p.name: p for p in pack.decoded()}
    assert any("wpe" in name for name in parts)  # the case this test is about
    merged, routed = load_base(gpt2_pair[0]), load_base(gpt2_pair[0])
    apply_pack(merged, pack_path, 1.0)
    bank = DeltaBank(routed, [PackDeltas("skill", parts, 1.0)])
    with RoutedModel(routed, bank, "tag", tag="skill"):
        got = logits(routed)
    assert got.shape[0] == 2 and torch.allclose(got, logits(merged), atol=1e-4)
