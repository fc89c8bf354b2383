"""Grafting: the base is checked before any change, packs stack, unapply is bit-exact."""

import pytest
import torch

from skillstore.errors import FingerprintMismatchError, ModelMismatchError
from skillstore.fingerprint import fingerprint_checkpoint
from skillstore.packs import (
    active_packs,
    apply_pack,
    compress_checkpoint,
    grafted,
    read_pack,
    unapply_pack,
)
from skillstore.packs.export import load_base

from .conftest import finetune_like, logits, tiny_llama


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same(model, snap):
    for k, v in model.state_dict().items():
        assert torch.equal(v, snap[k]), k


def test_apply_moves_the_base_towards_the_tuned_model(llama_pair, tmp_path):
    pack = compress_checkpoint(*llama_pair, "lossless", tmp_path / "p.safetensors").path
    model, tuned = load_base(llama_pair[0]), load_base(llama_pair[1])
    before = (logits(model) - logits(tuned)).abs().max()
    apply_pack(model, pack)
    assert (logits(model) - logits(tuned)).abs().max() < 1e-3 < before


def test_unapply_restores_base_exactly(llama_pair, compact_pack, tmp_path):
    model = load_base(llama_pair[0])
    snap = snapshot(model)
    apply_pack(model, compact_pack, scale=0.7)
    assert not torch.equal(model.state_dict()["model.layers.0.mlp.up_proj.weight"],
                           snap["model.layers.0.mlp.up_proj.weight"])
    unapply_pack(model, compact_pack, scale=0.7)
    assert_same(model, snap)
    assert active_packs(model) == []
    with grafted(model, compact_pack, 0.5):
        assert active_packs(model)
    assert_same(model, snap)


def test_bf16_model_also_restores_exactly(llama_pair, compact_pack):
    model = load_base(llama_pair[0], dtype=torch.bfloat16)
    model.skillstore_fingerprint = fingerprint_checkpoint(llama_pair[0])
    snap = snapshot(model)
    apply_pack(model, compact_pack)
    unapply_pack(model, compact_pack)
    assert_same(model, snap)


def test_several_packs_stack_and_unapply_in_any_order(llama_pair, tmp_path):
    other_dir = tmp_path / "other"
    finetune_like(tiny_llama(0), seed=7).save_pretrained(str(other_dir))
    a = compress_checkpoint(*llama_pair, "balanced", tmp_path / "a.safetensors").path
    b = compress_checkpoint(llama_pair[0], other_dir, "balanced", tmp_path / "b.safetensors").path
    model = load_base(llama_pair[0])
    snap = snapshot(model)
    apply_pack(model, a, 1.0)
    apply_pack(model, b, 0.5)
    only_b = load_base(llama_pair[0])
    apply_pack(only_b, b, 0.5)
    unapply_pack(model, a, 1.0)  # the first one out: b alone remains
    assert torch.allclose(logits(model), logits(only_b), atol=1e-6)
    unapply_pack(model, b, 0.5)
    assert_same(model, snap)
    with pytest.raises(ModelMismatchError, match="not applied"):
        unapply_pack(model, b, 0.5)


def test_fingerprint_mismatch_refused_before_any_change(compact_pack, tmp_path):
    stranger = tiny_llama(seed=5)  # same shapes, other weights, no fingerprint attribute
    snap = snapshot(stranger)
    with pytest.raises(FingerprintMismatchError, match="apply it to its own base"):
        apply_pack(stranger, compact_pack)
    assert_same(stranger, snap)
    assert active_packs(stranger) == []


def test_fingerprint_computed_when_not_attached(llama_pair, compact_pack):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(llama_pair[0]))
    apply_pack(model, compact_pack)
    assert model.skillstore_fingerprint == read_pack(compact_pack).base_fingerprint


def test_inexact_mode_keeps_no_copy_and_restores_up_to_rounding(llama_pair, compact_pack):
    model = load_base(llama_pair[0])
    snap = snapshot(model)
    apply_pack(model, compact_pack, 0.5, exact=False)
    assert model._skillstore_grafts.originals == {}
    unapply_pack(model, compact_pack, 0.5)
    for k, v in model.state_dict().items():
        assert torch.allclose(v, snap[k], atol=1e-6), k


def test_exact_apply_keeps_the_base_storage_instead_of_a_copy(llama_pair, tmp_path):
    pack = compress_checkpoint(*llama_pair, "balanced", tmp_path / "b.safetensors").path
    model = load_base(llama_pair[0])
    name = "model.layers.0.mlp.up_proj.weight"
    weight = dict(model.named_parameters())[name]
    base_ptr, before = weight.data_ptr(), weight.detach().clone()
    apply_pack(model, pack)
    snap = model._skillstore_grafts.originals[name]
    assert snap.full.data_ptr() == base_ptr and torch.equal(snap.full, before)  # kept, not copied
    assert weight.data_ptr() != base_ptr and not torch.equal(weight.detach(), before)
    sparse = [n for n, s in model._skillstore_grafts.originals.items() if s.full is None]
    assert "lm_head.weight" in sparse  # balanced prunes the head: only its touched entries are kept
    entries = model._skillstore_grafts.originals["lm_head.weight"].entries
    assert sum(idx.numel() for idx, _ in entries) < weight.numel()
    unapply_pack(model, pack)
    assert weight.data_ptr() == base_ptr


def test_sparse_then_dense_packs_on_one_tensor_restore_exactly(llama_pair, tmp_path):
    sparse = compress_checkpoint(*llama_pair, "balanced", tmp_path / "b.safetensors").path
    lossless = compress_checkpoint(*llama_pair, "lossless", tmp_path / "l.safetensors").path
    model = load_base(llama_pair[0])
    snap = snapshot(model)
    apply_pack(model, sparse, 0.5)   # the head: sparse entries
    apply_pack(model, lossless, 0.25)      # the head again: dense, over the sparse graft
    only_lossless = load_base(llama_pair[0])
    apply_pack(only_lossless, lossless, 0.25)
    unapply_pack(model, sparse, 0.5)
    assert torch.equal(model.state_dict()["lm_head.weight"],
                       only_lossless.state_dict()["lm_head.weight"])
    unapply_pack(model, lossless, 0.25)
    assert_same(model, snap)
    assert model._skillstore_grafts.originals == {}


def test_reapply_reuses_the_storage_unapply_released(llama_pair, compact_pack):
    from skillstore.packs import release_buffers

    model = load_base(llama_pair[0])
    snap = snapshot(model)
    params = dict(model.named_parameters())
    apply_pack(model, compact_pack)
    grafted = snapshot(model)
    ptrs = {params[n].data_ptr() for n in read_pack(compact_pack).names}
    unapply_pack(model, compact_pack)
    assert_same(model, snap)
    apply_pack(model, compact_pack)  # into the released storage (tensors of one shape may swap)
    assert {params[n].data_ptr() for n in read_pack(compact_pack).names} == ptrs
    assert_same(model, grafted)
    unapply_pack(model, compact_pack)
    assert release_buffers(model) > 0 and release_buffers(model) == 0
    assert_same(model, snap)
