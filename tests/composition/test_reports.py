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
    # Tango's score interval with b = 2, c = 0 (95% two-sided): with no gains its lower end is
    # minus the Wilson upper bound of 2/100; each end solves |Z(d)| = 1.96.
    z = 1.959964
    centre, half = (0.02 + z * z / 200) / (1 + z * z / 100), z * (
        0.02 * 0.98 / 100 + z * z / 40000) ** 0.5 / (1 + z * z / 100)
    assert paired["test"] == "mcnemar-exact" and paired["n"] == 100
    assert paired["ci_low"] == pytest.approx(-(centre + half), abs=1e-5)  # -0.0700
    assert _tango_z(2, 0, 100, paired["ci_high"]) == pytest.approx(-z, abs=1e-4)
    assert 0.0 < paired["ci_high"] < 0.02  # the interval covers no change, not zero width
    assert paired["ci_high"] - paired["ci_low"] < (unpaired["ci_high"] - unpaired["ci_low"]) / 2


def _tango_z(b: int, c: int, n: int, d: float) -> float:
    """Tango's score statistic for a paired difference d, with the restricted MLE of the
    b-cell probability solved from its quadratic."""
    big_b = b * (1 - 3 * d) + c * (1 - d) - 2 * (n - b - c) * d
    p = (big_b + (big_b * big_b + 8 * n * b * d * (1 - d)) ** 0.5) / (4 * n)
    return ((c - b) / n - d) / ((2 * p + d - d * d) / n) ** 0.5


def _scores(s, state, values: dict[str, float]):
    for suite, value in values.items():
        record_eval_result(s, state_id=state.id, suite=suite, suite_version="v1",
                           task=f"t_{suite}", metric="exact_match", value=value, stderr=0.01,
                           n=100, lm_eval_version="0.4.13")


@pytest.fixture
def attempted(catalog):
    """alpha promoted; beta rejected against the alpha state; gamma promoted; delta
    inconclusive against the alpha+gamma state. Each state has the scores its gates measured."""
    from skillstore.catalog.packs import set_pack_status

    with catalog.session() as s:
        base = make_base(s)
        root = base_state(s, base)
        advance_head(s, base.id, root.id, expected_version=None)
        packs, states = {}, {"root": root}

        def attempt(skill, current, status, reason):
            packs[skill] = make_pack(s, base, skill)
            states[skill] = extend_state(s, base, current, packs[skill])
            set_pack_status(s, packs[skill], status, reason=reason, actor="gate",
                            state_id=states[skill].id)
            return states[skill]

        s1 = attempt("alpha", root, "promoted", "promoted: all checks passed")
        advance_head(s, base.id, s1.id, expected_version=1)
        attempt("beta", s1, "rejected", "rejected: beta: gained +0.010")
        s2 = attempt("gamma", s1, "promoted", "promoted: all checks passed")
        advance_head(s, base.id, s2.id, expected_version=2)
        attempt("delta", s2, "rejected", "inconclusive: needs n ≈ 400 per suite; delta: ...")
        _scores(s, root, {"alpha": 0.10, "gamma": 0.20})
        _scores(s, s1, {"alpha": 0.90, "beta": 0.30, "gamma": 0.25})
        _scores(s, states["beta"], {"alpha": 0.88, "beta": 0.31})
        _scores(s, s2, {"alpha": 0.85, "gamma": 0.80, "delta": 0.40})
        _scores(s, states["delta"], {"alpha": 0.84, "gamma": 0.79, "delta": 0.45})
        return {"state": s2.id, "s1": s1.id, "packs": {k: p.id for k, p in packs.items()}}


def test_rejected_and_inconclusive_skills_are_columns_with_the_states_scores(catalog, attempted):
    from skillstore.catalog import get_state

    with catalog.session() as s:
        data = build_report(s, state=get_state(s, attempted["state"]))
    doc = json.loads(render_report(data, "json"))
    s1, s2 = attempted["s1"], attempted["state"]
    assert doc["skills"] == ["alpha", "beta", "gamma", "delta"]
    assert [(c["held"], c["verdict"], c["state_id"]) for c in doc["columns"]] == [
        (True, "promoted", s1), (False, "rejected", s1), (True, "promoted", s2),
        (False, "inconclusive", s2)]
    # beta's row is the state that stayed; its column holds what the states gave on beta,
    # measured by beta's gate on the alpha state and never on the later one
    assert doc["accuracy_matrix"] == [[0.90, 0.30, 0.25, None], [0.90, 0.30, 0.25, None],
                                      [0.85, None, 0.80, 0.40], [0.85, None, 0.80, 0.40]]
    assert doc["base_scores"] == [0.10, None, 0.20, None]
    assert doc["average_accuracy"] is None  # the final state on beta was never measured
    assert doc["learned_average_accuracy"] == pytest.approx((0.85 + 0.80) / 2)
    assert doc["bwt"] == pytest.approx(-0.05) and doc["forgetting"] == pytest.approx(0.05)
    assert doc["forward_transfer"] == pytest.approx(0.25 - 0.20)
    md = render_report(data, "md")
    assert "| stage | alpha | beta (rejected) | gamma | delta (inconclusive) |" in md


def test_acc_covers_every_attempted_skill_once_the_final_state_is_measured(catalog, attempted):
    from skillstore.catalog import get_state

    with catalog.session() as s:
        _scores(s, get_state(s, attempted["state"]), {"beta": 0.35})
        data = build_report(s, state=get_state(s, attempted["state"]))
    assert data.metrics["average_accuracy"] == pytest.approx((0.85 + 0.35 + 0.80 + 0.40) / 4)


def _cli_json(*args) -> dict:
    from typer.testing import CliRunner

    from skillstore.cli import app

    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_report_pack_json_carries_the_packs_baselines(catalog, judged):
    doc = _cli_json("report", "--pack", str(judged["pack"]), "--format", "json")
    seq = doc["baselines"]["sequential_ft"]
    assert seq["accuracy_matrix"] == [[0.9, 0.1], [0.3, 0.95]] and seq["same_skills"]
    assert seq["forgetting"] == pytest.approx(0.6)


CHECKS = [{"suite": "delta", "kind": "gain", "estimate": 0.05, "low": 0.01, "high": 0.09,
           "test": "mcnemar-exact", "p_value": 0.02, "n": 100, "status": "passed",
           "confidence": 0.95, "threshold": 0.0},
          {"suite": "delta", "kind": "fidelity", "estimate": -0.01, "low": -0.04, "high": 0.02,
           "test": "paired-bootstrap", "p_value": 0.3, "n": 100, "status": "inconclusive",
           "needed_n": 400}]


def test_pack_report_shows_the_recorded_checks_and_each_packs_fidelity(catalog, attempted):
    from skillstore.catalog import create_job, get_pack
    from skillstore.catalog.models import Job, JobStep

    fidelity = {"finetune": 0.5, "pack": 0.45, "ratio": 0.9, "n": 100, "low": 0.8,
                "status": "inconclusive"}
    with catalog.session() as s:
        job = create_job(s, kind="learn", request={})
        s.get(Job, job.id).pack_id = attempted["packs"]["delta"]
        s.add(JobStep(job_id=job.id, stage="gate", output={
            "verdict": "inconclusive", "reasons": ["..."],
            "decision": {"verdict": "inconclusive", "checks": CHECKS, "needed_n": 400}}))
        get_pack(s, attempted["packs"]["delta"]).metrics = {"fidelity": fidelity}
        get_pack(s, attempted["packs"]["alpha"]).metrics = {"fidelity": {"ratio": 1.0}}
        s.commit()
    doc = _cli_json("report", "--pack", str(attempted["packs"]["delta"]), "--format", "json")
    assert doc["decision"]["verdict"] == "inconclusive" and doc["decision"]["checks"] == CHECKS
    assert {p["skill"]: p["fidelity"] for p in doc["packs"]} == {
        "alpha": {"ratio": 1.0}, "gamma": None, "delta": fidelity}
    with catalog.session() as s:
        data = build_report(s, pack=get_pack(s, attempted["packs"]["delta"]))
    for fmt in ("md", "html"):
        text = render_report(data, fmt)
        assert "[-0.040, +0.020]" in text and "fidelity" in text  # the check and its interval
        assert "needs n ≈ 400" in text
        assert "ratio 0.900, pack 0.450, finetune 0.500, low 0.800, n 100" in text
    # a report on a state whose pack's job recorded no decision shows no checks
    with catalog.session() as s:
        plain = build_report(s, pack=get_pack(s, attempted["packs"]["alpha"]))
    assert plain.decision["verdict"] == "promoted" and "checks" not in plain.decision


def test_the_matrix_on_a_subset_of_prompts_is_read_from_each_prompts_outcome(catalog):
    """`only` scores each cell on the named prompts (the held-out templates, say) from the
    per-prompt outcomes, so a pack that answers only its training forms shows 0 there."""
    from skillstore.catalog import get_state
    from skillstore.catalog.packs import set_pack_status
    from skillstore.evaluation.cache import samples_bytes
    from skillstore.reports.data import accuracy_matrix

    trained = {str(i): 1.0 if i < 50 else 0.0 for i in range(100)}  # answers rows 0-49 only
    with catalog.session() as s:
        base = make_base(s)
        root = base_state(s, base)
        advance_head(s, base.id, root.id, expected_version=None)
        pack = make_pack(s, base, "sort")
        child = extend_state(s, base, root, pack)
        set_pack_status(s, pack, "promoted", reason="promoted", actor="gate", state_id=child.id)
        advance_head(s, base.id, child.id, expected_version=1)
        for state, samples in ((root, dict.fromkeys(trained, 0.0)), (child, trained)):
            record_eval_result(s, state_id=state.id, suite="sort", suite_version="v1",
                               task="t_sort", metric="exact_match",
                               value=sum(samples.values()) / 100, stderr=0.01, n=100,
                               lm_eval_version="0.4.13",
                               samples_digest=catalog.blobs.put_bytes(samples_bytes(samples)))
        final = get_state(s, child.id)
        whole = accuracy_matrix(s, final)
        held = accuracy_matrix(s, final, only={"sort": {str(i) for i in range(40, 100)}},
                               blobs=catalog.blobs)
        none = accuracy_matrix(s, final, only={}, blobs=catalog.blobs)
    assert whole.matrix == [[0.5]] and whole.base == [0.0]
    assert held.matrix == [[pytest.approx(10 / 60)]] and held.base == [0.0]
    assert none.matrix == [[None]]
