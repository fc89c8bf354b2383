"""The fusion contract on every registered method: one added to FUSION_METHODS is checked here."""

from __future__ import annotations

import pytest
import torch

from skillstore.errors import ConfigError
from skillstore.packs.format import read_pack
from skillstore.states.fusion import FUSION_METHODS, FusionMethod, merged_deltas

merging = [m for m in FUSION_METHODS.values() if m.merges]
routing = [m for m in FUSION_METHODS.values() if not m.merges]


def deltas(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return 0.01 * torch.randn(12, 20, generator=g), 0.01 * torch.randn(12, 20, generator=g)


@pytest.mark.parametrize("method", list(FUSION_METHODS.values()), ids=list(FUSION_METHODS))
def test_fusion_method_has_the_interface(method):
    assert isinstance(method, FusionMethod) and isinstance(method.merges, bool)


@pytest.mark.parametrize("method", merging, ids=lambda m: m.name)
def test_merge_gives_one_delta_of_the_same_shape_whatever_the_order(method):
    a, b = deltas()
    merged = method.merge([a, b], [1.0, 0.5])
    assert merged.shape == a.shape and merged.dtype.is_floating_point
    assert torch.isfinite(merged).all() and merged.abs().sum() > 0
    torch.testing.assert_close(method.merge([b, a], [0.5, 1.0]), merged)


@pytest.mark.parametrize("method", merging, ids=lambda m: m.name)
def test_merging_identical_deltas_keeps_their_signs(method):
    d, _ = deltas(1)
    merged = method.merge([d, d.clone()], [1.0, 1.0])
    assert merged.abs().sum() > 0
    kept = merged != 0
    assert torch.equal(torch.sign(merged[kept]), torch.sign(d[kept]))
    assert torch.nn.functional.cosine_similarity(merged.reshape(1, -1),
                                                 d.reshape(1, -1)).item() > 0.5


@pytest.mark.parametrize("method", merging, ids=lambda m: m.name)
def test_zero_scales_merge_to_nothing(method):
    a, b = deltas(2)
    assert torch.count_nonzero(method.merge([a, b], [0.0, 0.0])) == 0


@pytest.mark.parametrize("method", merging, ids=lambda m: m.name)
def test_merged_deltas_cover_every_tensor_of_every_pack(method, tiny_world):
    packs = [read_pack(p) for p in tiny_world.packs.values()]
    merged = merged_deltas(packs, [1.0, 1.0], method)
    assert set(merged) == {n for p in packs for n in p.names}
    for name, delta in merged.items():
        pack = next(p for p in packs if name in p.names)
        assert tuple(delta.shape) == tuple(pack.manifest["tensors"][name]["shape"])
        assert torch.isfinite(delta).all() and delta.abs().sum() > 0


@pytest.mark.parametrize("method", routing, ids=lambda m: m.name)
def test_a_routing_method_refuses_to_merge(method, tiny_world):
    a, b = deltas()
    with pytest.raises(ConfigError):
        method.merge([a, b], [1.0, 1.0])
    with pytest.raises(ConfigError, match="does not merge"):
        merged_deltas([read_pack(p) for p in tiny_world.packs.values()], [1.0, 1.0], method)
