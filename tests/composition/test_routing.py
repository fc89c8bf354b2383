"""Routers: hooked per-sample deltas equal grafting, routed lm-eval requests, learned accuracy."""

from __future__ import annotations

import random
from collections import Counter

import pytest
import torch

from skillstore.errors import ConfigError, CorruptPackError, RoutingError
from skillstore.models import load_causal_lm
from skillstore.packs.format import read_pack
from skillstore.packs.graft import grafted
from skillstore.routing import (
    NONE_CLASS,
    DeltaBank,
    PackDeltas,
    RoutedModel,
    get_router,
    load_router,
    save_router,
    train_router,
)
from skillstore.routing.learned import (
    RouterClassifier,
    feature_scale,
    fitting_forward,
    prompt_features,
    token_ngrams,
)
from skillstore.states.materialise import grafted_all

PROMPTS = ["copy ab: ", "reverse xyz = ", "copy hello: ", "reverse q = "]


@pytest.fixture(scope="module")
def world(tiny_world):
    model, tok = load_causal_lm(tiny_world.base_dir, dtype=torch.float32)
    tok.padding_side = "left"
    packs = {k: read_pack(v) for k, v in tiny_world.packs.items()}
    return model, tok, packs


def deltas(packs, scales=None):
    scales = scales or {}
    return [PackDeltas(name, {p.name: p for p in pf.decoded()}, scales.get(name, 1.0))
            for name, pf in packs.items()]


def logits(model, tok, prompts=PROMPTS):
    enc = tok(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**enc).logits


def test_hooked_deltas_equal_grafted_weights_per_sample(world):
    model, tok, packs = world
    base = logits(model, tok)
    with grafted(model, packs["alpha"]):
        with_alpha = logits(model, tok)
    with grafted_all(model, [packs["alpha"], packs["beta"]], [1.0, 0.5]):
        with_both = logits(model, tok)
    assert not torch.allclose(with_alpha, base, atol=1e-3)  # the packs do change outputs
    bank = DeltaBank(model, deltas(packs, {"beta": 0.5}))
    with bank:
        bank.weights = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 0.5], [1.0, 0.0]])
        routed = logits(model, tok)
    torch.testing.assert_close(routed[0], with_alpha[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(routed[1], base[1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(routed[2], with_both[2], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(routed[3], with_alpha[3], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(logits(model, tok), base)  # hooks gone, base untouched


def _toy_router(model, tok):
    train = {"alpha": [f"copy {w}: " for w in ("ab", "cd", "hello", "xy", "mno", "pq")],
             "beta": [f"reverse {w} = " for w in ("xyz", "q", "abc", "lm", "uvw", "rs")],
             NONE_CLASS: [f"next letter: {c} =" for c in "abcdef"]}
    return train_router(model, tok, train, steps=200).classifier


def test_learned_routing_generates_what_each_grafted_model_generates(world):
    model, tok, packs = world
    clf = _toy_router(model, tok)
    assert clf.predict(prompt_features(model, tok, PROMPTS)) == ["alpha", "beta", "alpha", "beta"]
    enc = tok(PROMPTS, return_tensors="pt", padding=True)
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
    expected = []
    for i, name in enumerate(["alpha", "beta", "alpha", "beta"]):
        with grafted(model, packs[name]):
            expected.append(model.generate(input_ids=enc["input_ids"][i:i + 1],
                                           attention_mask=enc["attention_mask"][i:i + 1], **kw)[0])
    bank = DeltaBank(model, deltas(packs))
    with RoutedModel(model, bank, "learned", classifier=clf,
                     pad_token_id=tok.pad_token_id) as routed:
        out = model.generate(**enc, **kw)
    assert torch.equal(out, torch.stack(expected))
    assert routed.last_weights.argmax(-1).tolist() == [0, 1, 0, 1]


def test_routed_loglikelihood_requests_through_lm_eval(world, tmp_path):
    """lm-eval's loglikelihood path (HFLM._model_call) sees the tagged pack like a grafted model."""
    import json

    from skillstore.evaluation.runner import run_tasks

    from .test_eval_cache import LL_YAML

    model, tok, packs = world
    data = tmp_path / "ll.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"copy {w}: ", "answer": w}) + "\n"
                            for w in ("ab", "xyz")))
    (tmp_path / "t_ll.yaml").write_text(LL_YAML.format(data=data))
    with grafted(model, packs["beta"]):
        want = {r.metric: r.value for r in run_tasks(model, tok, ["t_ll"], include_path=tmp_path)}
    with RoutedModel(model, DeltaBank(model, deltas(packs)), "tag", tag="beta",
                     pad_token_id=tok.pad_token_id):
        got = {r.metric: r.value for r in run_tasks(model, tok, ["t_ll"], include_path=tmp_path)}
    assert got["perplexity"] == pytest.approx(want["perplexity"], rel=1e-4)


def test_learned_router_accuracy_on_the_tiny_curriculum(world, tmp_path):
    """Trained on the training templates, the router places unseen payloads in those forms, and
    on n-grams it also places the held-out forms (no keyword, never trained on) by the words
    they share with the trained ones; the base's pooled hidden states do not."""
    from skillstore.curriculum.build import write_curriculum
    from skillstore.curriculum.skills import SKILLS
    from skillstore.curriculum.validate import load_rows

    model, tok, _ = world
    # 28 training templates a skill (four requests, bare and after six openers): 200 rows
    cur = write_curriculum(tmp_path / "cur", n_train=200, n_eval=50)

    def rows(files, split):
        return load_rows(files.split(split))

    train = ({n: [r["prompt"] for r in rows(f, "train")] for n, f in cur.skills.items()}
             | {NONE_CLASS: [r["prompt"] for r in rows(cur.general, "train")]})
    seen, unseen = [], []  # (prompt, class) on training templates / held-out templates
    for name, files in cur.skills.items():
        for r in rows(files, "test"):
            held = SKILLS[name].template(r["template"]).held_out
            (unseen if held else seen).append((r["prompt"], name))
    seen += [(r["prompt"], NONE_CLASS) for r in rows(cur.general, "test")]

    def accuracy(clf, pairs):
        predicted = clf.predict(clf.featurize(model, tok, [p for p, _ in pairs]))
        return sum(p == t for p, (_, t) in zip(predicted, pairs, strict=True)) / len(pairs)

    assert {t for _, t in seen} == {*cur.skills, NONE_CLASS}
    assert {t for _, t in unseen} == set(cur.skills)
    ngrams = train_router(model, tok, train).classifier
    hidden = train_router(model, tok, train, features="hidden").classifier
    assert ngrams.features == "ngrams" and hidden.features == "hidden"
    assert accuracy(ngrams, seen) >= 0.98 and accuracy(hidden, seen) >= 0.98
    # 0.98 and 0.49 when written: the held-out forms are the gap n-grams close
    assert accuracy(ngrams, unseen) >= 0.9 > accuracy(hidden, unseen)


def test_inputs_unlike_every_skill_get_no_pack(world, tmp_path):
    """Random strings are like neither the skills' prompts nor the general ones the router saw;
    its softmax still sends most to a pack. A skill whose prompts every general prompt is less
    like than its own gets a familiarity bound, and no random string reaches its pack; the
    skills' own test prompts keep theirs."""
    from skillstore.curriculum.build import write_curriculum
    from skillstore.curriculum.validate import load_rows

    model, tok, _ = world
    cur = write_curriculum(tmp_path / "cur", n_train=60, n_eval=50)
    train = ({n: [r["prompt"] for r in load_rows(f.split("train"))] for n, f in cur.skills.items()}
             | {NONE_CLASS: [r["prompt"] for r in load_rows(cur.general.split("train"))]})
    tests = [(r["prompt"], n) for n, f in cur.skills.items() for r in load_rows(f.split("test"))]
    rng = random.Random(0)
    noise = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789 ") for _ in
                     range(rng.randint(6, 40))) for _ in range(400)]
    clf = train_router(model, tok, train, calibration=0.2).classifier
    bounded_classes = set(clf.familiarity())  # general look-alikes stay below their prompts
    assert bounded_classes
    noise_feats = clf.featurize(model, tok, noise)
    test_feats = clf.featurize(model, tok, [p for p, _ in tests])
    bounded, kept = clf.predict(noise_feats), clf.predict(test_feats)
    clf.familiar.fill_(float("-inf"))
    free, free_kept = clf.predict(noise_feats), clf.predict(test_feats)

    def right(predicted):
        return sum(p == t for p, (_, t) in zip(predicted, tests, strict=True))

    sent, sent_free = Counter(bounded), Counter(free)
    # 49 random strings went to the two bounded classes' packs when written, none with bounds
    assert sum(sent_free[c] for c in bounded_classes) >= 10
    assert all(sent[c] == 0 for c in bounded_classes)
    assert all(sent[c] == sent_free[c] for c in set(cur.skills) - bounded_classes)
    assert right(kept) >= right(free_kept) - 0.01 * len(tests)


def test_token_ngrams_count_real_tokens_whichever_side_is_padded():
    ids = torch.tensor([[5, 6, 7, 5, 6]])
    feats = token_ngrams(ids, torch.ones_like(ids))
    # 5 unigrams, 4 bigrams (5-6 twice), 3 trigrams: 12 counts, the repeats in one bucket each
    assert feats.sum() == 12 and feats.max() >= 2
    right = token_ngrams(torch.tensor([[5, 6, 7, 5, 6, 0, 0]]), torch.tensor([[1] * 5 + [0] * 2]))
    left = token_ngrams(torch.tensor([[0, 0, 5, 6, 7, 5, 6]]), torch.tensor([[0] * 2 + [1] * 5]))
    torch.testing.assert_close(right, feats)
    torch.testing.assert_close(left, feats)
    assert not torch.equal(token_ngrams(torch.tensor([[6, 5, 7, 5, 6]]), None), feats)  # order


def test_router_file_round_trips_without_pickle(world, tmp_path):
    model, tok, _ = world
    clf = _toy_router(model, tok)
    path = save_router(clf, tmp_path / "router.safetensors")
    assert path.read_bytes()[:8] != b"\x80\x04\x95"[:8]  # not a pickle stream
    again = load_router(path)
    feats = prompt_features(model, tok, PROMPTS)
    torch.testing.assert_close(again.probs(feats), clf.probs(feats))
    assert again.classes == clf.classes and again.top_k == clf.top_k
    (tmp_path / "bad.safetensors").write_bytes(b"not a router")
    with pytest.raises(CorruptPackError, match="not a skillstore router"):
        load_router(tmp_path / "bad.safetensors")


def test_top_k_mixes_packs_with_normalised_weights(world):
    model, tok, packs = world
    clf = _toy_router(model, tok)
    clf.top_k = 2
    w = clf.class_weights(prompt_features(model, tok, PROMPTS))
    assert torch.allclose(w.sum(-1), torch.ones(len(PROMPTS)))
    assert ((w > 0).sum(-1) == 2).all()


def test_unknown_router_and_tag_are_refused(world):
    model, tok, packs = world
    with pytest.raises(ConfigError, match="Did you mean 'learned'"):
        get_router("learnd")
    enc = tok(PROMPTS[:1], return_tensors="pt")
    with RoutedModel(model, DeltaBank(model, deltas(packs)), "tag", tag="gamma"):
        with pytest.raises(ConfigError, match="Unknown skill tag 'gamma'"):
            model(**enc)
    with RoutedModel(model, DeltaBank(model, deltas(packs)), "learned"):
        with pytest.raises(RoutingError, match="no classifier"):
            model(**enc)


@pytest.mark.parametrize("kind", ["sparse counts", "dense"])
def test_fitting_forward_is_the_classifier_on_its_batch(kind):
    """Training's shortcut gives the classifier's own logits and weight gradients."""
    gen = torch.Generator().manual_seed(0)
    if kind == "sparse counts":
        ids = torch.randint(0, 500, (64, 12), generator=gen)
        feats = token_ngrams(ids, torch.ones_like(ids))
        feats[:, 7] = 3.0  # a bucket that never varies: std inf, it must read as 0
    else:
        feats = torch.randn(64, 32, generator=gen) + 5.0
    clf = RouterClassifier(["a", "b", "<none>"], feats.shape[1], hidden=16)
    clf.mean.copy_(feats.mean(0))
    clf.std.copy_(feature_scale(feats, 0.1))
    labels = torch.randint(0, 3, (64,), generator=gen)
    grads = []
    for logits in (fitting_forward(clf, feats), lambda: clf(feats)):
        clf.zero_grad()
        out = logits()
        torch.nn.functional.cross_entropy(out, labels).backward()
        grads.append((out.detach(), [p.grad.clone() for p in clf.parameters()]))
    (fast, fast_grads), (plain, plain_grads) = grads
    assert torch.allclose(fast, plain, atol=1e-5)
    for a, b in zip(fast_grads, plain_grads, strict=True):
        assert torch.allclose(a, b, atol=1e-6)
