"""Merging a pack for good (removable=False): in place, no copy kept, same weights, no unapply."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from skillstore.errors import ModelMismatchError
from skillstore.packs import active_packs, apply_pack, compress_checkpoint, unapply_pack
from skillstore.packs import graft as graft_mod
from skillstore.packs.export import export_merged, load_base

from .conftest import save_pair, tiny_llama


def _weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.fixture(scope="module")
def half_packs(tmp_path_factory) -> dict[str, tuple]:
    """(base folder, balanced pack) of a tiny Llama pair saved in bf16 and in fp16."""
    out = {}
    for dtype in ("bfloat16", "float16"):
        root = tmp_path_factory.mktemp(dtype)
        pair = save_pair(root, lambda seed, d=dtype: tiny_llama(seed).to(getattr(torch, d)))
        compress_checkpoint(*pair, "balanced", root / "balanced.safetensors")
        out[dtype] = (pair[0], root / "balanced.safetensors")
    return out


def _close(got: torch.Tensor, want: torch.Tensor, base: torch.Tensor) -> None:
    """A half-precision weight within one step of its dtype of the exact path's, most
    entries bit for bit (float32 slabs of other sizes sum in another order). bf16 also
    rounds the factors to bf16: at most about 1% of the tensor's largest delta entry, far
    below a pack's own error."""
    step = torch.finfo(want.dtype).eps * torch.exp2(torch.floor(torch.log2(
        want.float().abs().clamp_min(1e-30))))
    if want.dtype == torch.bfloat16:
        step = step + 1e-2 * float((want.float() - base.float()).abs().max())
    assert bool(((got.float() - want.float()).abs() <= step).all())
    assert float((got == want).float().mean()) > 0.9


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_in_place_merge_equals_the_exact_path(dtype, llama_pair, compact_pack, half_packs,
                                              monkeypatch):
    base, pack = (llama_pair[0], compact_pack) if dtype == "float32" else half_packs[dtype]
    # slabs of one row, so that an fp16 matrix is added in many slabs
    monkeypatch.setattr(graft_mod, "SLAB_BYTES", 1)
    exact, fast = load_base(base), load_base(base)
    assert next(fast.parameters()).dtype == getattr(torch, dtype)
    before = _weights(fast)
    apply_pack(exact, pack, 0.7)
    apply_pack(fast, pack, 0.7, removable=False)
    after, want = _weights(fast), _weights(exact)
    if dtype != "float32":
        for name in want:
            _close(after[name], want[name], before[name])
    else:
        _assert_same(want, after)
    changed = [n for n in after if not torch.equal(after[n], before[n])]
    assert any("proj" in n for n in changed) and any("embed" in n for n in changed)


def test_in_place_merge_keeps_no_copy(llama_pair, compact_pack):
    model = load_base(llama_pair[0])
    ptrs = {n: p.data_ptr() for n, p in model.named_parameters()}
    apply_pack(model, compact_pack, removable=False)
    assert {n: p.data_ptr() for n, p in model.named_parameters()} == ptrs
    state = getattr(model, graft_mod.STATE_ATTR)
    assert not state.originals and not state.spare
    # the exact path, for contrast, points low-rank tensors at new storage
    exact = load_base(llama_pair[0])
    apply_pack(exact, compact_pack)
    assert {n: p.data_ptr() for n, p in exact.named_parameters()} != ptrs


def test_unapply_of_a_pack_merged_for_good_is_refused(llama_pair, compact_pack):
    model = load_base(llama_pair[0])
    apply_pack(model, compact_pack, 0.5, removable=False)
    merged = _weights(model)
    with pytest.raises(ModelMismatchError, match=r"merged for good.*removable=True"):
        unapply_pack(model, compact_pack, 0.5)
    _assert_same(_weights(model), merged)
    assert [(p.digest, s) for p, s in active_packs(model)] == [(
        active_packs(model)[0][0].digest, 0.5)]


def test_merge_for_good_over_a_removable_pack_is_refused(llama_pair, compact_pack):
    model = load_base(llama_pair[0])
    apply_pack(model, compact_pack)
    held = _weights(model)
    with pytest.raises(ModelMismatchError, match="unapply them first"):
        apply_pack(model, compact_pack, 0.5, removable=False)
    _assert_same(_weights(model), held)


def test_removable_pack_over_one_merged_for_good_comes_off(llama_pair, compact_pack):
    model = load_base(llama_pair[0])
    apply_pack(model, compact_pack, 0.5, removable=False)
    merged = _weights(model)
    apply_pack(model, compact_pack, 0.25)
    unapply_pack(model, compact_pack, 0.25)
    # back to base + 0.5 delta bit for bit: the merged pack is not added a second time
    _assert_same(_weights(model), merged)


def test_export_merged_writes_the_exact_weights(llama_pair, compact_pack, tmp_path):
    out = export_merged(llama_pair[0], [(compact_pack, 0.5), (compact_pack, 0.25)],
                        tmp_path / "merged")
    exact = load_base(llama_pair[0])
    apply_pack(exact, compact_pack, 0.5)
    apply_pack(exact, compact_pack, 0.25)
    saved = load_file(out / "model.safetensors")
    for name, p in exact.named_parameters():
        assert torch.equal(saved[name], p.detach()), name
