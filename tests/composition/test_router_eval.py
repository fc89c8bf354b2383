"""The learned router measured and abstaining: confusion, threshold, the state's stored evaluation,
the report, and top-k against top-1 on mixed prompts."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from skillstore.routing import NONE_CLASS, DeltaBank, RouterClassifier, load_router, save_router
from skillstore.routing.evaluate import chosen_packs, confusion, top_k_measure
from skillstore.routing.learned import MAX_THRESHOLD, calibrated_threshold, keep_bound
from skillstore.routing.routers import RouteInputs, get_router

from .test_routing import deltas, world  # noqa: F401  (world is a fixture)

CLASSES = ["alpha", "beta", NONE_CLASS]


def toy_classifier(threshold: float | None = None) -> RouterClassifier:
    """Features are class scores: 5 on one class routes there with probability 0.99; all zeros
    is a uniform 1/3, the least confident input there is."""
    clf = RouterClassifier(CLASSES, 3, hidden=3, threshold=threshold)
    with torch.no_grad():
        for linear in (clf.net[0], clf.net[2]):
            linear.weight.copy_(torch.eye(3))
            linear.bias.zero_()
    return clf.eval()


def one_hot(*rows: int | None) -> torch.Tensor:
    return torch.stack([torch.zeros(3) if r is None else 5.0 * torch.eye(3)[r] for r in rows])


def test_confusion_counts_match_a_hand_count():
    clf = toy_classifier(threshold=0.5)
    predicted = clf.predict(one_hot(0, 0, 1, 2, None))
    assert predicted == ["alpha", "alpha", "beta", NONE_CLASS, NONE_CLASS]  # the last abstains
    out = confusion(clf.classes, ["alpha", "beta", "beta", NONE_CLASS, "alpha"], predicted)
    assert out["n"] == 5 and out["accuracy"] == pytest.approx(3 / 5)
    assert out["confusion"] == {"alpha": {"alpha": 1, "beta": 0, NONE_CLASS: 1},
                                "beta": {"alpha": 1, "beta": 1, NONE_CLASS: 0},
                                NONE_CLASS: {"alpha": 0, "beta": 0, NONE_CLASS: 1}}
    assert out["per_class"] == {"alpha": {"accuracy": 0.5, "n": 2},
                                "beta": {"accuracy": 0.5, "n": 2},
                                NONE_CLASS: {"accuracy": 1.0, "n": 1}}
    assert out["right"] == 3
    json.dumps(out)  # stored as JSON


def _calibration(general: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """100 alpha prompts routed right at confidences 0.40 ... 0.99, one routed wrong, and
    general (NONE) prompts that the router sends to alpha at the ``general`` confidences."""
    right = torch.linspace(0.40, 0.99, 100)
    probs = torch.stack([torch.tensor([p, (1 - p) / 2, (1 - p) / 2]) for p in right]
                        + [torch.tensor([0.1, 0.9, 0.0])]
                        + [torch.tensor([p, (1 - p) / 2, (1 - p) / 2]) for p in general])
    return probs, torch.tensor([0] * 101 + [2] * len(general))


def test_threshold_abstains_on_general_inputs_only_as_far_as_it_keeps_skill_routes():
    right = torch.linspace(0.40, 0.99, 100)
    # misrouted general prompts below every skill route: the threshold is just above them
    probs, labels = _calibration([0.35, 0.38])
    assert calibrated_threshold(probs, labels, CLASSES) == pytest.approx(right[0].item())
    # above the 99% keep bound (the second-lowest right route) they stay misrouted: abstaining
    # on them would cost more than 1% of the skill routes
    probs, labels = _calibration([0.9, 0.95])
    assert keep_bound(probs, labels, CLASSES) == pytest.approx(right[1].item())
    assert calibrated_threshold(probs, labels, CLASSES) is None
    # a router with nothing to fix never abstains
    probs, labels = _calibration([])
    assert calibrated_threshold(probs, labels, CLASSES) is None


def test_threshold_is_never_set_within_a_hair_of_certainty():
    # a router sure of its skills (0.9999...) that sent one general prompt to a pack at 0.9995:
    # abstaining above it would fix that prompt, but no threshold above MAX_THRESHOLD is set
    probs, labels = _calibration([0.9995])
    probs[:100, 0] = torch.linspace(0.99991, 0.99999, 100)
    probs[:100, 1:] = (1 - probs[:100, :1]) / 2
    assert keep_bound(probs, labels, CLASSES) > 0.9995
    assert calibrated_threshold(probs, labels, CLASSES) is None
    probs, labels = _calibration([0.9, 0.95])  # below the cap, the same rule still fires
    probs[:100, 0] = torch.linspace(0.96, 0.989, 100)
    assert calibrated_threshold(probs, labels, CLASSES) == pytest.approx(0.96)
    assert MAX_THRESHOLD == 0.99


def test_threshold_routes_a_low_confidence_input_to_no_pack(world):  # noqa: F811
    model, tok, packs = world
    bank = DeltaBank(model, deltas(packs))
    ids = torch.ones(2, 3, dtype=torch.long)
    feats = one_hot(1, None)

    def weights(clf):
        inputs = RouteInputs(bank, ids, torch.ones_like(ids), classifier=clf, _features=feats)
        return get_router("learned").select(inputs)

    sure = bank.names.index("beta")
    w = weights(toy_classifier(threshold=0.5))
    assert w[0, sure] == bank.packs[sure].scale and w[1].abs().sum() == 0  # abstained: no pack
    assert weights(toy_classifier()).abs().sum(-1).tolist()[1] > 0  # no threshold: a pack


def test_router_file_without_threshold_loads_and_never_abstains(tmp_path):
    path = save_router(toy_classifier(threshold=0.5), tmp_path / "new.safetensors")
    assert load_router(path).threshold == 0.5
    with safe_open(str(path), framework="pt") as f:
        config = json.loads(f.metadata()["skillstore_router"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    del config["threshold"]  # a router written before abstention existed
    old = tmp_path / "old.safetensors"
    save_file(tensors, str(old), metadata={"skillstore_router": json.dumps(config)})
    clf = load_router(old)
    assert clf.threshold is None
    assert NONE_CLASS not in clf.predict(one_hot(None, 0, 1))
    assert clf.features == "ngrams"  # what the file says
    config.update(format="skillstore.router/1")
    del config["features"]  # a router written before it named its features read hidden states
    save_file(tensors, str(old), metadata={"skillstore_router": json.dumps(config)})
    assert load_router(old).features == "hidden"


def test_top_k_measure_on_a_hand_made_case():
    chosen = [frozenset({"a"}), frozenset({"a", "b"}), frozenset(), frozenset({"a"})]
    labels = [["a", "b"], ["b", "a"], [], []]
    assert top_k_measure(chosen, labels) == {"exact": 0.5, "recall": 0.625, "n": 4}
    feats = torch.tensor([[1.5, 1.0, 0.0], [0.0, 1.5, 2.0]])  # alpha > beta; NONE > beta
    clf = toy_classifier()
    assert chosen_packs(clf, feats, 1) == [{"alpha"}, set()]  # NONE on top: no pack
    assert chosen_packs(clf, feats, 2) == [{"alpha", "beta"}, {"beta"}]
    top = clf.probs(feats).max(-1).values
    assert top[0] < top[1]
    clf.threshold = float(top.mean())
    assert chosen_packs(clf, feats, 2) == [set(), {"beta"}]  # the first abstains


def test_an_input_unfamiliar_to_its_top_class_abstains():
    clf = toy_classifier()
    clf.centroid.copy_(torch.eye(3))
    feats = torch.tensor([[5.0, 0.0, 0.0], [5.0, 4.0, 0.0]])  # both alpha, at 0.99 and 0.78
    assert clf.predict(feats) == ["alpha", "alpha"]  # no bound yet: never abstains
    clf.familiar[0] = 0.9  # cosine to alpha's centroid: 1.0 and 0.78
    assert clf.predict(feats) == ["alpha", NONE_CLASS]
    assert chosen_packs(clf, feats, 2) == [{"alpha"} | {"beta"}, set()]


def test_state_stores_its_router_evaluation_outside_its_fingerprint(world, tiny_world,  # noqa: F811
                                                                    catalog, tmp_path):
    from skillstore.catalog import get_pack
    from skillstore.catalog.models import BaseCheckpoint
    from skillstore.catalog.states import state_fingerprint
    from skillstore.curriculum.build import write_curriculum
    from skillstore.curriculum.router_eval import MIXED, load_router_eval
    from skillstore.curriculum.validate import load_rows
    from skillstore.reports.data import build_report
    from skillstore.reports.render import render_report
    from skillstore.routing.evaluate import evaluate_top_k
    from skillstore.states import base_state
    from skillstore.states.service import candidate_state

    from .conftest import make_base, make_pack

    model, tok, _ = world
    cur = write_curriculum(tmp_path / "cur", n_train=60, n_eval=50)
    general = [r["prompt"] for r in load_rows(cur.general.train)]
    general_test = [r["prompt"] for r in load_rows(cur.general.test)]
    names = {"alpha": "reverse", "beta": "add"}  # the tiny packs stand in for two skills
    with catalog.session() as s:
        base = make_base(s, fingerprint=model.skillstore_fingerprint, uri=str(tiny_world.base_dir))
        for pack_name, skill in names.items():
            pack = make_pack(s, base, skill,
                             blob_digest=catalog.blobs.put_file(tiny_world.packs[pack_name]))
            pack.skill.data_uri = str(cur.skills[skill].train)
        s.flush()
        one = candidate_state(s, catalog.blobs, base_state(s, base), get_pack(s, "reverse@v1"),
                              model, tok, router="learned", general_prompts=general,
                              general_test=general_test)
        two = candidate_state(s, catalog.blobs, one, get_pack(s, "add@v1"), model, tok,
                              general_prompts=general, general_test=general_test)
        config = dict(two.router_config)
        ev = config["evaluation"]
        assert ev["prompts"] == "held-out test split"
        assert set(ev["per_class"]) == {"reverse", "add", NONE_CLASS}
        # every test prompt the router did not train on (the general suite repeats some)
        assert {c: v["n"] for c, v in ev["per_class"].items()} == {"reverse": 50, "add": 50,
                                                                   NONE_CLASS: 16}
        assert ev["n"] == sum(sum(row.values()) for row in ev["confusion"].values())
        assert 0.0 <= ev["accuracy"] <= 1.0 and "threshold" in config
        inputs = {k: v for k, v in config.items() if k != "evaluation"}
        packs = [(get_pack(s, f"{n}@v1").blob_digest, 1.0) for n in ("reverse", "add")]
        assert two.fingerprint == state_fingerprint(
            s.get(BaseCheckpoint, base.id).fingerprint, packs, "learned", inputs,
            two.router_blob_digest)

        data = build_report(s, state=two)
        router = data.as_json()["router"]
        assert router["confusion"] == ev["confusion"] and router["threshold"] == config["threshold"]
        assert router["interval"][0] <= ev["accuracy"] <= router["interval"][1]
        md = render_report(data, "md")
        assert "Router confusion matrix" in md and f"{ev['accuracy']:.3f}" in md

        clf = load_router(catalog.blobs.local_path(two.router_blob_digest))
        mixed = [r for r in load_router_eval(cur.router_eval) if r["kind"] == MIXED]
        by_k = evaluate_top_k(clf, model, tok, mixed)
        assert by_k[1]["n"] == by_k[2]["n"] == len(mixed)
        assert by_k[1]["exact"] == 0.0  # one pack never covers a two-skill prompt


def test_predicted_routes_apply_the_threshold_and_distrust_its_edge(tmp_path):
    """Outcome reuse predicts a doc's route as Learned.select takes it: below the threshold the
    plain base, and a top probability within the margin of it unpredictable."""
    from types import SimpleNamespace

    from skillstore.evaluation.routes import BASE, StateRoutes, hooked

    clf = toy_classifier()
    edge = one_hot(0) / 5  # a score of 1 on alpha: top probability e/(e+2), about 0.58
    clf.threshold = clf.probs(edge).max().item()
    path = save_router(clf, tmp_path / "router.safetensors")
    members = [SimpleNamespace(name=n, blob_digest=f"sha256:{n}", scale=1.0)
               for n in ("alpha", "beta")]
    view = SimpleNamespace(router="learned", members=members, router_blob_digest="r")
    routes = StateRoutes(view, SimpleNamespace(local_path=lambda digest, cache=None: path))
    feats = torch.cat([one_hot(0), one_hot(None), edge])
    assert routes.routes("s", feats, 3) == [hooked([("sha256:alpha", 1.0)]), BASE, None]
    routes.classifier.threshold = None  # the same inputs without abstention
    assert routes.routes("s", feats, 3)[1:] == [None, hooked([("sha256:alpha", 1.0)])]
