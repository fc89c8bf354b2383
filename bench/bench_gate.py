"""Gate benchmark: the real decision code on simulated paired 0/1 outcomes with known effects."""

from __future__ import annotations

import json
import os
import time
import zlib
from pathlib import Path

import numpy as np

from skillstore.evaluation import Score
from skillstore.evaluation.stats import wilson_interval
from skillstore.gate import Decision, GatePolicy, decide

SEED = 20250
DECISIONS = int(os.environ.get("SKILLSTORE_BENCH_GATE_DECISIONS", "1000"))
SIZES = (100, 200, 792)  # the demo's --eval-limit, a middle size, the default held-out split
TOLERANCES = (0.01, 0.05)  # the library's default max_drop, the demo's
P_EARLIER = 0.8
AA_DISCORDANCE = (0.0, 0.02, 0.05)
DROP = 0.05
DROP_DISCORDANCE = (0.05, 0.15)  # every flip a loss; or 10 points lost and 5 won
P_NEW = 0.3  # the new skill's accuracy before it is learned, for the calibration cells
GAINS = (0.0, 0.05, 0.3)
GAIN_NOISE = 0.10  # discordance beyond the gain: 5% of prompts flip each way on top of it
CAL_SIZES = (100, 792)
UNLEARNED_N, UNLEARNED_P = 100, (0.05, 0.06)
NEW, OLD = "new", "old"
# A new skill learned beyond doubt (0/100 -> 100/100): its gain check always passes, so the
# verdict of the A/A and power cells is the earlier skill's drop check alone.
_LEARNED = (Score(0.0, 0.0, 100, {f"{i:03d}": 0 for i in range(100)}),
            Score(1.0, 0.0, 100, {f"{i:03d}": 1 for i in range(100)}))


def pair(rng: np.random.Generator, n: int, p: float, gain: float,
         discordance: float) -> tuple[np.ndarray, np.ndarray]:
    """Before ~ Bernoulli(p) per prompt; after differs on a share ``discordance`` of prompts,
    wrong->right on (discordance + gain) / 2 of them and right->wrong on the rest, so that
    E[after - before] = gain exactly."""
    up, down = (discordance + gain) / 2.0, (discordance - gain) / 2.0
    q01 = up / (1.0 - p)
    q10 = down / p if p > 0.0 else 0.0
    assert 0.0 <= q01 <= 1.0 and 0.0 <= q10 <= 1.0 and (p > 0.0 or down == 0.0), (p, gain)
    before = rng.random(n) < p
    u = rng.random(n)
    return before, np.where(before, u >= q10, u < q01)


def _score(outcomes: np.ndarray, keys: list[str]) -> Score:
    n = len(outcomes)
    value = float(outcomes.mean())
    return Score(value, float(np.sqrt(value * (1.0 - value) / n)), n,
                 dict(zip(keys, outcomes.astype(int).tolist(), strict=True)))


def _rng(label: str) -> np.random.Generator:
    """One stream per cell, from the seed and the cell's label: any cell reruns alone."""
    return np.random.default_rng([SEED, zlib.crc32(label.encode())])


def _rate(k: int, n: int) -> dict:
    ci = wilson_interval(k, n, 0.95)
    return {"k": k, "n": n, "rate": k / n, "low": ci.low, "high": ci.high}


def _binomial(n: int, p: float):
    """(k, P(Binomial(n, p) = k)) for k = 0, 1, ...; stops past the mean below 1e-15."""
    weight = (1.0 - p) ** n
    for k in range(n + 1):
        if k > n * p and weight < 1e-15:
            return
        yield k, weight
        weight *= (n - k) / (k + 1) * p / (1.0 - p)


def _exact_all_loss(n: int, tol: float, drop: float) -> dict:
    """When every flip is a loss, b ~ Binomial(n, drop), c = 0 and the verdict depends on b
    alone: the exact rates, from the real decision run once per b (b of 0.8n right prompts
    lost), weighted by the binomial pmf."""
    keys, right = [f"{i:04d}" for i in range(n)], round(P_EARLIER * n)
    policy = GatePolicy(max_drop=tol, max_general_drop=tol)
    promoted = covers = 0.0
    for b, weight in _binomial(n, drop):
        assert b <= right, (n, b)
        x = np.arange(n) < right
        y = x & (np.arange(n) >= b)
        d = decide(policy, new_skill=NEW, before={NEW: _LEARNED[0], OLD: _score(x, keys)},
                   after={NEW: _LEARNED[1], OLD: _score(y, keys)}, earlier_skills=[OLD],
                   general_suites=())
        promoted += weight * d.promote
        covers += weight * (d.checks[1].high >= drop - 1e-12)
    return {"promoted": promoted, "upper_bound_covers": covers}


def _exact_unlearned(n: int, p: float) -> dict:
    """0/n before, so b = 0 and c ~ Binomial(n, p): the exact promotion rate, from the real
    decision run once per c."""
    keys, policy, promoted = [f"{i:04d}" for i in range(n)], GatePolicy(), 0.0
    x = np.zeros(n, dtype=bool)
    for c, weight in _binomial(n, p):
        d = decide(policy, new_skill=NEW, before={NEW: _score(x, keys)},
                   after={NEW: _score(np.arange(n) < c, keys)}, earlier_skills=(),
                   general_suites=())
        promoted += weight * d.promote
    return {"promoted": promoted}


def _drop_cell(n: int, tol: float, drop: float, discordance: float) -> dict:
    """The earlier skill (accuracy P_EARLIER) loses ``drop`` in truth; one drop check decides."""
    label = f"drop n={n} tol={tol} drop={drop} d={discordance}"
    rng, keys = _rng(label), [f"{i:04d}" for i in range(n)]
    policy = GatePolicy(max_drop=tol, max_general_drop=tol)
    verdicts = {"promoted": 0, "rejected": 0, "inconclusive": 0}
    high_covers = 0
    for _ in range(DECISIONS):
        x, y = pair(rng, n, P_EARLIER, -drop, discordance)
        d = decide(policy, new_skill=NEW, before={NEW: _LEARNED[0], OLD: _score(x, keys)},
                   after={NEW: _LEARNED[1], OLD: _score(y, keys)}, earlier_skills=[OLD],
                   general_suites=())
        assert d.checks[0].passed, d.checks[0].reason
        verdicts[d.verdict] += 1
        high_covers += d.checks[1].high >= drop - 1e-12
    exact = {"exact": _exact_all_loss(n, tol, drop)} if drop > 0 and discordance == drop else {}
    return {"n": n, "tolerance": tol, "true_drop": drop, "discordance": discordance,
            "decisions": DECISIONS} | {v: _rate(k, DECISIONS) for v, k in verdicts.items()} \
        | {"not_promoted": _rate(DECISIONS - verdicts["promoted"], DECISIONS),
           "upper_bound_covers": _rate(high_covers, DECISIONS)} | exact


def _gain_cell(n: int, p: float, gain: float, discordance: float) -> dict:
    """The new skill gains ``gain`` in truth; the gain check alone decides."""
    label = f"gain n={n} p={p} gain={gain} d={discordance}"
    rng, keys = _rng(label), [f"{i:04d}" for i in range(n)]
    policy = GatePolicy()
    verdicts = {"promoted": 0, "rejected": 0, "inconclusive": 0}
    low_covers = high_covers = 0
    for _ in range(DECISIONS):
        x, y = pair(rng, n, p, gain, discordance)
        d: Decision = decide(policy, new_skill=NEW, before={NEW: _score(x, keys)},
                             after={NEW: _score(y, keys)}, earlier_skills=(),
                             general_suites=())
        check = d.checks[0]
        verdicts[d.verdict] += 1
        low_covers += check.low <= gain + 1e-12
        high_covers += check.high >= gain - 1e-12
    exact = {"exact": _exact_unlearned(n, gain)} if p == 0.0 and discordance == gain else {}
    return exact | {"n": n, "p_before": p, "true_gain": gain, "discordance": discordance,
            "min_gain": policy.min_gain, "confidence": policy.confidence, "decisions": DECISIONS,
            "lower_bound_covers": _rate(low_covers, DECISIONS),
            "upper_bound_covers": _rate(high_covers, DECISIONS)} \
        | {v: _rate(k, DECISIONS) for v, k in verdicts.items()}


def _pct(r: dict) -> str:
    return f"{100 * r['rate']:.1f} [{100 * r['low']:.1f}, {100 * r['high']:.1f}]"


def markdown(result: dict) -> str:
    per = f"{DECISIONS:,} simulated decisions per row; % with Wilson 95% interval"
    lines = [f"**A/A** (earlier skill at p = {P_EARLIER}, no true change; {per})", "",
             "| n | tolerance | discordance | false rejection | inconclusive | promoted |",
             "|---|---|---|---|---|---|"]
    for c in result["aa"]:
        lines.append(f"| {c['n']} | {c['tolerance']} | {c['discordance']} | "
                     f"{_pct(c['rejected'])} | {_pct(c['inconclusive'])} | "
                     f"{_pct(c['promoted'])} |")
    lines += ["", f"**Power** (earlier skill at p = {P_EARLIER} drops {DROP} in truth; {per})",
              "", "| n | tolerance | discordance | not promoted | rejected | inconclusive | "
              "drop's upper bound >= 0.05 (nominal 95) | exact, every flip a loss |",
              "|---|---|---|---|---|---|---|---|"]
    for c in result["power"]:
        exact = f"{100 * c['exact']['upper_bound_covers']:.2f}" if "exact" in c else "-"
        lines.append(f"| {c['n']} | {c['tolerance']} | {c['discordance']} | "
                     f"{_pct(c['not_promoted'])} | {_pct(c['rejected'])} | "
                     f"{_pct(c['inconclusive'])} | {_pct(c['upper_bound_covers'])} | {exact} |")
    lines += ["", f"**Calibration of the gain check** (new skill at p = {P_NEW} before, "
              f"discordance = gain + {GAIN_NOISE}; one-sided bounds at 0.95; {per})", "",
              "| n | true gain | lower bound <= gain (nominal 95) | upper bound >= gain "
              "(nominal 95) | promoted at min_gain 0.05 |", "|---|---|---|---|---|"]
    for c in result["calibration"]:
        lines.append(f"| {c['n']} | {c['true_gain']} | {_pct(c['lower_bound_covers'])} | "
                     f"{_pct(c['upper_bound_covers'])} | {_pct(c['promoted'])} |")
    lines += ["", f"**Learned check, the demo's unlearned case** (0/{UNLEARNED_N} before, "
              f"each prompt right after with probability p; min_gain 0.05; {per})", "",
              "| p after (= true gain) | promoted | exact promoted | rejected | inconclusive |",
              "|---|---|---|---|---|"]
    for c in result["unlearned"]:
        lines.append(f"| {c['true_gain']} | {_pct(c['promoted'])} | "
                     f"{100 * c['exact']['promoted']:.2f} | {_pct(c['rejected'])} | "
                     f"{_pct(c['inconclusive'])} |")
    lines += ["", f"seed {SEED}; {result['seconds']:.0f} s"]
    return "\n".join(lines) + "\n"


def run(out_dir: Path) -> None:
    """Every cell, then the Markdown tables printed and written with gate.json."""
    started = time.perf_counter()
    result = {"seed": SEED, "decisions_per_cell": DECISIONS, "p_earlier": P_EARLIER,
              "aa": [_drop_cell(n, tol, 0.0, d) for n in SIZES for tol in TOLERANCES
                     for d in AA_DISCORDANCE],
              "power": [_drop_cell(n, tol, DROP, d) for n in SIZES for tol in TOLERANCES
                        for d in DROP_DISCORDANCE],
              "calibration": [_gain_cell(n, P_NEW, g, g + GAIN_NOISE) for n in CAL_SIZES
                              for g in GAINS],
              "unlearned": [_gain_cell(UNLEARNED_N, 0.0, p, p) for p in UNLEARNED_P]}
    result["targets"] = {
        "aa_false_rejection_at_most_5pct": all(c["rejected"]["rate"] <= 0.05
                                               for c in result["aa"]),
        "power_not_promoted_at_least_80pct_at_792": all(
            c["not_promoted"]["rate"] >= 0.8 for c in result["power"] if c["n"] == 792),
        "unlearned_p006_never_promoted": next(c for c in result["unlearned"]
                                              if c["true_gain"] == 0.06)["promoted"]["k"] == 0}
    # The gate's own nominal claims, beside the brief's targets: a drop equal to the tolerance
    # is promoted at most 1 - confidence of the time; the gain's lower bound covers >= 95%.
    result["nominal"] = {
        "drop_at_tolerance_promoted_at_most_5pct": all(
            c["promoted"]["low"] <= 0.05 for c in result["power"] if c["tolerance"] == DROP),
        "drop_at_tolerance_promoted_at_most_5pct_exactly_when_every_flip_is_a_loss": all(
            c["exact"]["promoted"] <= 0.05 for c in result["power"]
            if c["tolerance"] == DROP and "exact" in c),
        "gain_at_min_gain_promoted_at_most_5pct_exactly_when_every_flip_is_a_gain": next(
            c for c in result["unlearned"] if c["true_gain"] == 0.05)["exact"]["promoted"] <= 0.05,
        "gain_lower_bound_covers_95pct": all(c["lower_bound_covers"]["high"] >= 0.95
                                             for c in result["calibration"])}
    result["seconds"] = time.perf_counter() - started
    text = markdown(result)
    print(text)
    print("targets: " + ", ".join(f"{k} {'met' if v else 'MISSED'}"
                                  for k, v in result["targets"].items()))
    print("nominal: " + ", ".join(f"{k} {'holds' if v else 'DOES NOT HOLD'}"
                                  for k, v in result["nominal"].items()))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gate.md").write_text(text)
    (out / "gate.json").write_text(json.dumps(result, indent=2) + "\n")
