"""How well a learned router routes: accuracy and confusion on labelled prompts, top-k on mixes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from .learned import NONE_CLASS, RouterClassifier

#: Most prompts per class a state's router evaluation reads (keeps it to seconds).
EVAL_PROMPTS = 200


def confusion(classes: Sequence[str], truth: Sequence[str], predicted: Sequence[str]) -> dict:
    """Accuracy (with its n; reports add its interval), per-class accuracy and the confusion
    matrix ``confusion[true][predicted]`` (counts; every class in both places, NONE_CLASS among
    them, as a router that abstains predicts it) of ``predicted`` against ``truth``."""
    names = list(dict.fromkeys([*classes, NONE_CLASS]))
    counts = {t: dict.fromkeys(names, 0) for t in names}
    for t, p in zip(truth, predicted, strict=True):
        counts[t][p] += 1
    right = sum(counts[c][c] for c in names)
    n = len(truth)
    per_class = {}
    for c in names:
        n_c = sum(counts[c].values())
        if n_c:
            per_class[c] = {"accuracy": counts[c][c] / n_c, "n": n_c}
    return {"accuracy": right / n if n else None, "n": n, "right": right, "per_class": per_class,
            "confusion": {t: row for t, row in counts.items() if sum(row.values())}}


def evaluate_router(clf: RouterClassifier, model, tokenizer,
                    labelled: Mapping[str, Sequence[str]]) -> dict:
    """:func:`confusion` of the router's decisions (its threshold applied: an abstention
    predicts NONE_CLASS) on ``labelled``, class (a pack name or NONE_CLASS) -> prompts."""
    truth = [c for c, prompts in labelled.items() for _ in prompts]
    texts = [p for prompts in labelled.values() for p in prompts]
    predicted = clf.predict(clf.featurize(model, tokenizer, texts)) if texts else []
    return confusion(clf.classes, truth, predicted)


def chosen_packs(clf: RouterClassifier, features: torch.Tensor, k: int) -> list[frozenset[str]]:
    """The packs each input gets when the router mixes its top ``k`` classes: those classes
    less NONE_CLASS, and none at all where the router abstains (its threshold, or an input
    unfamiliar to its top class)."""
    probs = clf.probs(features)
    top = probs.topk(k, dim=-1).indices.tolist()
    off = clf.abstains(probs, features).tolist()
    return [frozenset() if o else frozenset(clf.classes[i] for i in row) - {NONE_CLASS}
            for row, o in zip(top, off, strict=True)]


def top_k_measure(chosen: Sequence[frozenset[str]], labels: Sequence[Sequence[str]]) -> dict:
    """Two measures of chosen pack sets against labelled skill sets, with their n.

    ``exact``: the share of inputs whose chosen packs are exactly their labelled skills (a
    two-skill prompt is never exact at top-1; a prompt for no skill is exact when no pack is
    chosen). ``recall``: the mean share of each input's labelled skills among its chosen packs
    (1 for an input labelled with none when it gets none, else 0).
    """
    exact = recall = 0.0
    for got, want in zip(chosen, labels, strict=True):
        want = frozenset(want)
        exact += got == want
        recall += len(got & want) / len(want) if want else float(not got)
    n = len(labels)
    return {"exact": exact / n if n else None, "recall": recall / n if n else None, "n": n}


def evaluate_top_k(clf: RouterClassifier, model, tokenizer, rows: Sequence[Mapping],
                   ks: Sequence[int] = (1, 2)) -> dict[int, dict]:
    """k -> :func:`top_k_measure` of the router mixing its top k classes on ``rows`` (each a
    ``prompt`` and its ``skills``, as ``curriculum.router_eval.load_router_eval`` reads them:
    pass the mixed rows to compare top-2 against top-1 where two skills are asked at once)."""
    if not rows:
        return {k: top_k_measure([], []) for k in ks}
    features = clf.featurize(model, tokenizer, [r["prompt"] for r in rows])
    labels = [r["skills"] for r in rows]
    return {k: top_k_measure(chosen_packs(clf, features, k), labels) for k in ks}
