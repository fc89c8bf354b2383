"""Model states: stable fingerprints, candidates built on the current state, materialise guards."""

from __future__ import annotations

import pytest

from skillstore.errors import ConfigError, FingerprintMismatchError, RoutingError
from skillstore.states import base_state, extend_state, load_view, materialise

from .conftest import make_base, make_pack
from .tinymodel import tiny_llama, tiny_tokenizer


def test_same_inputs_same_state_and_any_change_a_new_one(catalog):
    with catalog.session() as s:
        base = make_base(s)
        root = base_state(s, base)
        a, b = make_pack(s, base, "alpha"), make_pack(s, base, "beta")
        s1 = extend_state(s, base, root, a)
        assert extend_state(s, base, root, a).id == s1.id  # same inputs, same row
        s2 = extend_state(s, base, s1, b)
        assert [m.pack_id for m in s2.members] == [a.id, b.id] and s2.parent_id == s1.id
        assert extend_state(s, base, s1, b, scale=0.5).fingerprint != s2.fingerprint
        assert extend_state(s, base, s1, b, router="tag").fingerprint != s2.fingerprint
        a2 = make_pack(s, base, "alpha", blob_digest="sha256:" + "1" * 64)  # alpha v2 replaces v1
        s3 = extend_state(s, base, s2, a2)
        assert [m.pack_id for m in s3.members] == [b.id, a2.id]
        with pytest.raises(ConfigError, match="Did you mean 'learned'"):
            extend_state(s, base, s1, b, router="lerned")


def test_materialise_refuses_foreign_packs_and_untrained_routers(tiny_world, catalog):
    from skillstore.models import load_causal_lm

    model, _ = load_causal_lm(tiny_world.base_dir)
    with catalog.session() as s:
        base = make_base(s, fingerprint=model.skillstore_fingerprint, uri=str(tiny_world.base_dir))
        pack = make_pack(s, base, "alpha",
                         blob_digest=catalog.blobs.put_file(tiny_world.packs["alpha"]))
        learned = extend_state(s, base, base_state(s, base), pack, router="learned")
        view = load_view(s, learned)
        plain = load_view(s, extend_state(s, base, base_state(s, base), pack))
    with pytest.raises(RoutingError, match="no router file"):
        with materialise(model, view, catalog.blobs):
            pass
    other = tiny_llama(tiny_tokenizer(), seed=7)
    with pytest.raises(FingerprintMismatchError):
        with materialise(other, plain, catalog.blobs):
            pass
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with materialise(model, plain, catalog.blobs) as grafted:
        assert any(not (grafted.state_dict()[k] == v).all() for k, v in before.items())
    # base restored exactly
    assert all((model.state_dict()[k] == v).all() for k, v in before.items())


@pytest.mark.parametrize("exact", [False, True])
def test_training_inside_grafted_packs_keeps_its_changes_only_when_not_exact(tiny_world, exact):
    """--start-from current trains on base + packs, then stores what training changed; an
    exact unapply restores the base on the packs' tensors and would throw that change away."""
    import torch

    from skillstore.models import load_causal_lm
    from skillstore.packs import read_pack
    from skillstore.states import grafted_all

    model, _ = load_causal_lm(tiny_world.base_dir, fingerprint=True)
    packs = [read_pack(p) for p in tiny_world.packs.values()]
    params = dict(model.named_parameters())
    touched = "model.layers.0.self_attn.q_proj.weight"  # changed by pack alpha
    assert touched in packs[0].names
    base = params[touched].detach().clone()
    update = torch.randn_like(base, generator=torch.Generator().manual_seed(0)) * 0.01
    with torch.no_grad(), grafted_all(model, packs, [1.0, 1.0], exact=exact):
        assert not torch.equal(params[touched], base)
        params[touched].add_(update)  # what an optimiser step does
    after = dict(model.named_parameters())[touched].detach()
    if exact:
        assert torch.equal(after, base)  # the documented trade-off: exact means base again
    else:
        torch.testing.assert_close(after, base + update, rtol=0, atol=1e-5)
