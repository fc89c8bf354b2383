"""Reports render in every format and their numbers are the eval table's."""

from __future__ import annotations

import base64
import json
import re

import pytest

from skillstore.catalog import advance_head, eval_results, record_eval_result
from skillstore.errors import ConfigError
from skillstore.evaluation import Score
from skillstore.gate import GatePolicy, decide, record_decision
from skillstore.reports import build_report, render_report
from skillstore.states import base_state, extend_state

from .conftest import make_base, make_pack

# suite -> score per stage: base, after alpha, after beta
SCORES = {"alpha": (0.10, 0.90, 0.85), "beta": (0.05, 0.20, 0.95), "general": (0.80, 0.79, 0.78)}


def record(s, state, stage):
    for suite, values in SCORES.items():
        for task_i, bump in enumerate((0.0, 0.02)):  # two tasks per suite, mean is the headline
            record_eval_result(s, state_id=state.id, suite=suite, suite_version="v1",
                               task=f"{suite}_{task_i}", metric="exact_match",
                               value=values[stage] + bump, stderr=0.01, n=100,
                               lm_eval_version="0.4.13")


@pytest.fixture
def judged(catalog):
    with catalog.session() as s:
        base = make_base(s)
        root = base_state(s, base)
        advance_head(s, base.id, root.id, expected_version=None)
        a, b = make_pack(s, base, "alpha"), make_pack(s, base, "beta", size_bytes=4321)
        b.metrics = {"baselines": {"sequential_ft": {"skills": ["alpha", "beta"],
                                                     "accuracy_matrix": [[0.9, 0.1], [0.3, 0.95]]}}}
        s1 = extend_state(s, base, root, a)
        s2 = extend_state(s, base, s1, b)
        for stage, st in enumerate((root, s1, s2)):
            record(s, st, stage)
        policy = GatePolicy(min_gain=0.1, max_drop=0.1, max_general_drop=0.1)
        before = {k: Score(v[1] + 0.01, 0.01) for k, v in SCORES.items()}
        after = {k: Score(v[2] + 0.01, 0.01) for k, v in SCORES.items()}
        decision = decide(policy, new_skill="beta", before=before, after=after,
                          earlier_skills=["alpha"])
        record_decision(s, b, decision, candidate=s2, expected_version=1, report_ref=None)
        return {"pack": b.id, "state": s2.id}


def test_report_numbers_match_the_eval_table(catalog, judged):
    from skillstore.catalog import get_pack, get_state

    with catalog.session() as s:
        data = build_report(s, pack=get_pack(s, judged["pack"]))
        doc = json.loads(render_report(data, "json"))
        table = {}
        for st in (get_state(s, judged["state"]),):
            for r in eval_results(s, st.id):
                table.setdefault(r.suite, []).append(r.value)
    assert doc["skills"] == ["alpha", "beta"]
    mean = lambda suite, stage: SCORES[suite][stage] + 0.01  # noqa: E731
    assert doc["accuracy_matrix"] == [
        [pytest.approx(mean("alpha", 1)), pytest.approx(mean("beta", 1))],
        [pytest.approx(mean("alpha", 2)), pytest.approx(mean("beta", 2))]]
    # the last row is exactly the eval table's mean per suite for the judged state
    assert doc["accuracy_matrix"][-1] == [pytest.approx(sum(table[k]) / len(table[k]))
                                          for k in ("alpha", "beta")]
    assert doc["bwt"] == pytest.approx(mean("alpha", 2) - mean("alpha", 1))
    assert doc["forgetting"] == pytest.approx(mean("alpha", 1) - mean("alpha", 2))
    assert doc["average_accuracy"] == pytest.approx((mean("alpha", 2) + mean("beta", 2)) / 2)
    assert doc["decision"]["verdict"] == "promoted"
    base_row = doc["base_scores"]
    assert base_row == [pytest.approx(mean("alpha", 0)), pytest.approx(mean("beta", 0))]
    delta = {d["suite"]: d for d in doc["deltas"]}["alpha"]
    assert delta["delta"] == pytest.approx(-0.05) and delta["ci_low"] < -0.05 < delta["ci_high"]
    seq = doc["baselines"]["sequential_ft"]
    assert seq["bwt"] == pytest.approx(0.3 - 0.9) and seq["forgetting"] == pytest.approx(0.6)
    assert {p["size_bytes"] for p in doc["packs"]} == {1000, 4321}
    assert any(e["kind"] == "trained_on" for e in doc["lineage"]["edges"])
    for key in ("skills", "accuracy_matrix", "bwt", "forgetting", "average_accuracy", "decision",
                "baselines"):
        assert key in doc


def test_markdown_and_html_render_the_same_numbers(catalog, judged):
    from skillstore.catalog import get_state

    with catalog.session() as s:
        data = build_report(s, state=get_state(s, judged["state"]))
    md = render_report(data, "md")
    assert "**Decision: promoted**" in md and f"{SCORES['beta'][2] + 0.01:.3f}" in md
    page = render_report(data, "html")
    assert page.startswith("<!doctype html>") and "Decision: promoted" in page
    png = re.search(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page).group(1)
    assert base64.b64decode(png)[:8] == b"\x89PNG\r\n\x1a\n"
    assert not re.search(r"(src|href)=['\"](?!data:)", page)  # one self-contained file
    assert f"{data.metrics['bwt']:.3f}" in page


def test_unknown_format_is_refused(catalog, judged):
    from skillstore.catalog import get_state

    with catalog.session() as s:
        data = build_report(s, state=get_state(s, judged["state"]))
    with pytest.raises(ConfigError, match="Did you mean 'html'"):
        render_report(data, "htm")


def _two_states(s, before: dict, after: dict, blobs=None):
    """A base state and its child, each with one 'sort' row of 100 prompts (stderr 0, as the old
    runner stored it under a limit); with ``blobs`` the per-sample outcomes too."""
    from skillstore.evaluation.cache import samples_bytes

    base = make_base(s)
    root = base_state(s, base)
    child = extend_state(s, base, root, make_pack(s, base, "sort"))
    for state, samples in ((root, before), (child, after)):
        digest = blobs.put_bytes(samples_bytes(samples)) if blobs else None
        record_eval_result(s, state_id=state.id, suite="sort", suite_version="v1", task="t_sort",
                           metric="exact_match", value=sum(samples.values()) / 100, stderr=0.0,
                           n=100, lm_eval_version="0.4.13", samples_digest=digest)
    return child


BEFORE_80 = {str(i): 1.0 if i < 80 else 0.0 for i in range(100)}
AFTER_78 = {str(i): 1.0 if i < 78 else 0.0 for i in range(100)}  # two prompts lost


def test_deltas_show_a_real_interval_even_from_rows_with_zero_stderr(catalog):
    with catalog.session() as s:
        data = build_report(s, state=_two_states(s, BEFORE_80, AFTER_78))
    (d,) = data.deltas
    assert d["delta"] == pytest.approx(-0.02) and d["test"].startswith("unpaired-normal")
    assert d["ci_low"] < -0.1 and d["ci_high"] > 0.05  # plus-four binomial, never zero width
    assert "[+0.000, +0.000]" not in render_report(data, "md")


def test_deltas_are_paired_over_prompts_when_the_samples_were_kept(catalog):
    with catalog.session() as s:
        state = _two_states(s, BEFORE_80, AFTER_78, catalog.blobs)
        paired = build_report(s, state=state, blobs=catalog.blobs).deltas[0]
        unpaired = build_report(s, state=state).deltas[0]
    # Agresti-Min with b = 2, c = 0: centre -2/102, se sqrt(3 - 4/102) / 102, 95% two-sided
    se = (3 - 4 / 102) ** 0.5 / 102
    assert paired["test"] == "mcnemar-exact" and paired["n"] == 100
    assert paired["ci_low"] == pytest.approx(-2 / 102 - 1.959964 * se, abs=1e-5)
    assert paired["ci_high"] == pytest.approx(-2 / 102 + 1.959964 * se, abs=1e-5)
    assert paired["ci_high"] - paired["ci_low"] < (unpaired["ci_high"] - unpaired["ci_low"]) / 3
