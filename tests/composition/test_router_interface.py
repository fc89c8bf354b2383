"""The router contract, run on every registered router: one added to ROUTERS is checked here."""

from __future__ import annotations

import pytest
import torch

from skillstore.models import load_causal_lm
from skillstore.packs.format import read_pack
from skillstore.routing import NONE_CLASS, DeltaBank, PackDeltas, RoutedModel, train_router
from skillstore.routing.routers import ROUTERS, RouteInputs, Router

# Rows 0 and 1 are the same prompt: every router must route them alike.
PROMPTS = ["copy ab: ", "copy ab: ", "reverse xyz = "]
SCALES = {"alpha": 1.0, "beta": 0.5}

routers = pytest.mark.parametrize("router", list(ROUTERS.values()), ids=list(ROUTERS))


@pytest.fixture(scope="module")
def world(tiny_world):
    """The tiny base, a bank of its two packs, a tokenised batch, and a classifier that sends
    "copy" prompts to alpha and "reverse" prompts to no pack (so both cases are exercised)."""
    model, tok = load_causal_lm(tiny_world.base_dir, dtype=torch.float32)
    tok.padding_side = "left"
    packs = [PackDeltas(name, {p.name: p for p in read_pack(path).decoded()}, SCALES[name])
             for name, path in tiny_world.packs.items()]
    clf = train_router(model, tok,
                       {"alpha": ["copy ab: ", "copy cd: ", "copy xy: "],
                        "beta": ["sort: cba = ", "sort: zyx = ", "sort: qp = "],
                        NONE_CLASS: ["reverse xyz = ", "reverse q = ", "reverse mn = "]},
                       steps=100).classifier
    enc = tok(PROMPTS, return_tensors="pt", padding=True)
    return model, tok, DeltaBank(model, packs), clf, enc


def select(router: Router, world, tag: str | None = "alpha") -> torch.Tensor:
    model, _, bank, clf, enc = world
    return router.select(RouteInputs(bank, enc["input_ids"], enc["attention_mask"], tag=tag,
                                     classifier=clf))


@routers
def test_router_gives_one_weight_per_sample_and_pack_within_its_scale(router, world):
    assert isinstance(router, Router)
    bank = world[2]
    w = select(router, world)
    assert w.shape == (len(PROMPTS), len(bank.packs)) and w.dtype.is_floating_point
    assert torch.isfinite(w).all()
    share = w / bank.scales  # every scale here is positive
    assert ((share >= 0) & (share <= 1 + 1e-6)).all(), w
    torch.testing.assert_close(w[0], w[1])  # the same input is routed the same way
    torch.testing.assert_close(select(router, world), w)  # and again on a second call
    assert bank.weights is None and bank.enabled  # select reads the bank, never sets it


@routers
def test_router_with_no_tag_still_routes(router, world):
    """A request without a tag is normal (the general skills); no router may fail on it."""
    w = select(router, world, tag=None)
    assert w.shape == (len(PROMPTS), len(world[2].packs)) and torch.isfinite(w).all()


@routers
def test_routed_forward_applies_exactly_the_selected_packs(router, world):
    model, tok, bank, clf, enc = world
    with torch.no_grad():
        base = model(**enc).logits
    with RoutedModel(model, bank, router.name, classifier=clf, tag="alpha",
                     pad_token_id=tok.pad_token_id) as routed, torch.no_grad():
        logits = model(**enc).logits
        weights = routed.last_weights
    assert logits.shape == base.shape
    torch.testing.assert_close(weights, select(router, world))
    for row, w in enumerate(weights):
        if torch.all(w == 0):  # no pack: the plain base
            torch.testing.assert_close(logits[row], base[row])
        else:
            assert not torch.allclose(logits[row], base[row], atol=1e-4), (router.name, row, w)
    with torch.no_grad():
        torch.testing.assert_close(model(**enc).logits, base)  # the hooks are gone on exit
