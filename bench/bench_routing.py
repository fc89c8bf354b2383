"""The learned router on prompts it never trained on, by kind of template.

Trained the way `states.service` trains a state's router (the first ROUTER_PROMPTS training
prompts of each of the five curriculum skills, the general suite's as the no-pack class,
CALIBRATION of them setting the abstention threshold), on the zoo target, for five seeds.
Scored on every skill's whole test split, split by `Template.kind` (trained forms, new
openers, new phrasings), and on the general suite's test prompts (no pack is right): each
seed's accuracy, and the Wilson 95% interval of the worst seed's (the seeds' routers answer
the same prompts, so their prompts are not pooled into one n). Then the fit itself, side by
side: `fit_classifier` (standardising, then 300 full-batch AdamW steps) on the same n-gram
features through `fitting_forward` (the batch standardised once, the first layer sparse) and
through the classifier as it is, interleaved, three times each.

    python -m bench routing        # writes bench/out/routing.json
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

SEEDS = (0, 1, 2, 3, 4)


def _log(msg: str) -> None:
    print(f"[routing] {msg}", flush=True)


def run(out: Path) -> dict:
    import torch

    from skillstore.curriculum.skills import KINDS, SKILLS
    from skillstore.curriculum.validate import load_rows
    from skillstore.evaluation.stats import wilson_interval
    from skillstore.models import load_causal_lm
    from skillstore.routing import NONE_CLASS, train_router
    from skillstore.states.service import CALIBRATION, ROUTER_PROMPTS
    from skillstore.zoo import build_zoo

    torch.set_num_threads(1)
    zoo = build_zoo()
    cur = zoo.load_curriculum()
    model, tok = load_causal_lm(zoo.target)
    prompts = {n: [r["prompt"] for r in load_rows(f.train)[:ROUTER_PROMPTS]]
               for n, f in cur.skills.items()}
    prompts[NONE_CLASS] = [r["prompt"] for r in load_rows(cur.general.train)[:ROUTER_PROMPTS]]
    groups: dict[str, list[tuple[str, str]]] = {k: [] for k in KINDS}
    for name, files in cur.skills.items():
        for row in load_rows(files.test):
            groups[SKILLS[name].template(row["template"]).kind].append((row["prompt"], name))
    groups["general (no pack)"] = [(r["prompt"], NONE_CLASS)
                                   for r in load_rows(cur.general.test)]
    groups["held out (new opener + new phrasing)"] = groups[KINDS[1]] + groups[KINDS[2]]
    right: dict[str, list[int]] = {kind: [] for kind in groups}
    for seed in SEEDS:
        _log(f"router seed {seed}: {sum(map(len, prompts.values()))} training prompts")
        clf = train_router(model, tok, prompts, calibration=CALIBRATION, seed=seed).classifier
        for kind, pairs in groups.items():
            predicted = clf.predict(clf.featurize(model, tok, [p for p, _ in pairs]))
            right[kind].append(sum(p == t for p, (_, t) in zip(predicted, pairs, strict=True)))
    rows = []
    for kind, pairs in groups.items():
        n, worst = len(pairs), min(right[kind])
        ci = wilson_interval(worst, n)
        rows.append({"prompts": kind, "n": n, "right": right[kind],
                     "accuracy": [k / n for k in right[kind]], "worst": worst / n,
                     "low": ci.low, "high": ci.high})
    result = {"zoo": str(zoo.root), "seeds": list(SEEDS), "router_prompts": ROUTER_PROMPTS,
              "calibration": CALIBRATION, "rows": rows, "fit": fit_seconds(model, tok, prompts)}
    (out / "routing.json").write_text(json.dumps(result, indent=2) + "\n")
    print("| test prompts | n | accuracy, seeds 0-4 | worst seed [95% Wilson] |\n"
          "|---|---|---|---|")
    for r in rows:
        seeds = " / ".join(f"{a:.3f}" for a in r["accuracy"])
        print(f"| {r['prompts']} | {r['n']} | {seeds} | {r['worst']:.3f} "
              f"[{r['low']:.3f}, {r['high']:.3f}] |")
    fit = result["fit"]
    print(f"\nfit, {fit['steps']} steps on {fit['examples']} prompts (median of 3, 1 thread): "
          f"as trained {fit['fitting_forward_s']:.2f} s, classifier as it is "
          f"{fit['classifier_s']:.2f} s; {fit['speedup']:.1f}x")
    return result


def fit_seconds(model, tok, prompts: dict, steps: int = 300, repeats: int = 3) -> dict:
    """Seconds for `fit_classifier` (standardising, then `steps` steps) through
    `fitting_forward` and through the classifier's own forward, on the same features,
    interleaved."""
    import torch

    from skillstore.routing.learned import RouterClassifier, fit_classifier, prompt_features

    texts = [t for items in prompts.values() for t in items]
    labels = torch.tensor([i for i, items in enumerate(prompts.values()) for _ in items])
    feats = prompt_features(model, tok, texts)
    times: dict[str, list[float]] = {"fitting_forward": [], "classifier": []}
    for _ in range(repeats):
        for way in times:
            torch.manual_seed(0)
            clf = RouterClassifier(list(prompts), feats.shape[1])
            start = time.perf_counter()
            fit_classifier(clf, feats, labels, steps=steps, lr=1e-2,
                           shortcut=way == "fitting_forward")
            times[way].append(time.perf_counter() - start)
    fast, plain = (statistics.median(times[w]) for w in ("fitting_forward", "classifier"))
    return {"steps": steps, "examples": len(texts), "fitting_forward_s": fast,
            "classifier_s": plain, "speedup": plain / fast, "runs": times}
