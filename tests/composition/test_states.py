"""Model states: stable fingerprints, candidates built from the current state, materialisation guards."""

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
        pack = make_pack(s, base, "alpha", blob_digest=catalog.blobs.put_file(tiny_world.packs["alpha"]))
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
    assert all((model.state_dict()[k] == v).all() for k, v in before.items())  # base restored exactly
