"""`experiment report`: aggregates over seeds with t-intervals checked against values computed
here, the same numbers in md, html and json, a self-contained HTML page, failed and unfinished
runs shown and left out, the one-seed case without an interval, and the CLI and API paths."""

from __future__ import annotations

import itertools
import json
import math
import re
import statistics

import pytest
from fastapi.testclient import TestClient

from skillstore.catalog.schema import JobStatus
from skillstore.evaluation.stats import t_quantile
from skillstore.experiments import parse_spec
from skillstore.experiments.catalog import create_experiment, refresh_status
from skillstore.experiments.report import build_experiment_report, render_experiment_report
from tests.conftest import run_cli

from .conftest import spec_doc
from .test_runs import AUTH, catalog  # noqa: F401 - a workspace with the spec's base and skills

# Two-sided 95% Student t quantiles (t(0.975, df)), from published tables.
T975 = {1: 12.706204736174694, 2: 4.302652729749462, 4: 2.7764451051977934}
ERROR = "CUDA out of memory at stage sort; lower train.batch_size"


def result(matrix, metrics, sizes, seed):
    """A run's result as methods._result writes it, by hand (skills arith, sort)."""
    return {"skills": ["arith", "sort"], "accuracy_matrix": matrix,
            "n": [[100, 100] for _ in matrix], "base_scores": [0.05, 0.1],
            "metrics": metrics, "bytes_per_skill": dict(zip(["arith", "sort"], sizes, strict=True)),
            "changed_params": {}, "scorer": "lm-eval", "limit": 100, "seed": seed,
            "seconds": 12.5}


def seq(avg, bwt, fgt, fwt):
    return {"average_accuracy": avg, "bwt": bwt, "forgetting": fgt, "forward_transfer": fwt}


def gated(run: dict, *verdicts: tuple[str, str, str]) -> dict:
    """``run`` with the spec gate's verdicts, as graft.stage_verdicts records them."""
    return {**run, "gate": [{"skill": k, "new_skill": k, "verdict": v, "summary": f"{v}: {why}",
                             "promote": v == "promoted", "checks": []}
                            for k, v, why in verdicts]}


# method -> seed -> (status, result or error)
RUNS = {
    "graft": {0: gated(result([[0.92, 0.1], [0.9, 0.8]], seq(0.85, -0.02, 0.02, 0.01),
                              [1000, 3000], 0),
                       ("arith", "promoted", "all checks passed"),
                       ("sort", "promoted", "all checks passed")),
              1: gated(result([[0.9, 0.12], [0.85, 0.95]], seq(0.9, -0.05, 0.05, 0.03),
                              [1500, 3500], 1),
                       ("arith", "promoted", "all checks passed"),
                       ("sort", "rejected", "forgot arith: dropped +0.050")),
              2: ERROR},
    "naive_ft": {
        0: result([[0.9, 0.1], [0.2, 0.9]], seq(0.55, -0.7, 0.7, 0.0), [2_000_000, 2_000_000], 0),
        1: result([[0.88, 0.1], [0.3, 0.85]], seq(0.575, -0.58, 0.58, -0.01),
                  [2_100_000, 1_900_000], 1),
        2: result([[0.91, 0.1], [0.1, 0.95]], seq(0.525, -0.81, 0.81, 0.02),
                  [2_200_000, 2_200_000], 2)},
    "joint": {0: result([[0.95, 0.9]], {"average_accuracy": 0.925, "bwt": None,
                                        "forgetting": None, "forward_transfer": None},
                        [1_000_000, 1_000_000], 0),
              1: JobStatus.cancelled, 2: JobStatus.queued},
}


def make_experiment(session, runs=RUNS) -> int:
    """The spec's experiment with each run's status and result written as RUNS says."""
    spec = parse_spec(spec_doc(methods={"graft": {"policy": "compact"}, "naive_ft": None,
                                        "joint": None}, seeds=[0, 1, 2]))
    experiment = create_experiment(session, spec)
    for run in experiment.runs:
        given = runs[run.method][run.seed]
        if isinstance(given, JobStatus):
            run.status = given
        elif isinstance(given, dict):
            run.status, run.result = JobStatus.succeeded, given
        else:
            run.status, run.error = JobStatus.failed, given
    refresh_status(session, experiment.id)
    return experiment.id


def expected(values):
    """Mean and half-width of the 95% t-interval, computed here."""
    mean = statistics.mean(values)
    if len(values) == 1:
        return mean, None
    return mean, T975[len(values) - 1] * statistics.stdev(values) / math.sqrt(len(values))


@pytest.fixture
def doc(session):
    from skillstore.catalog.models import Experiment

    return build_experiment_report(session, session.get(Experiment, make_experiment(session)))


def by_label(doc):
    return {m["label"]: m for m in doc["methods"]}


def test_t_quantile_matches_the_tables():
    for df, t in T975.items():
        assert t_quantile(0.95, df) == pytest.approx(t, abs=1e-9)


def test_aggregates_are_means_with_t_intervals_over_the_finished_seeds(doc):
    methods = by_label(doc)
    assert list(methods) == ["graft", "naive_ft", "joint"]
    assert [methods[m]["seeds"] for m in methods] == [[0, 1], [0, 1, 2], [0]]
    for label, m in methods.items():
        runs = [r for r in RUNS[label].values() if isinstance(r, dict)]
        for key in ("average_accuracy", "bwt", "forgetting", "forward_transfer"):
            values = [r["metrics"][key] for r in runs if r["metrics"][key] is not None]
            if not values:
                assert m[key] is None, (label, key)
                continue
            mean, half = expected(values)
            assert m[key]["mean"] == pytest.approx(mean, abs=5e-5), (label, key)
            assert m[key]["n"] == len(values)
            if half is None:
                assert m[key]["half_width"] is None and m[key]["low"] is None
            else:
                assert m[key]["half_width"] == pytest.approx(half, abs=1e-4), (label, key)
                assert m[key]["low"] == pytest.approx(mean - half, abs=2e-4)
        mean, half = expected([sum(r["bytes_per_skill"].values()) / 2 for r in runs])
        assert m["bytes_per_skill"]["mean"] == pytest.approx(mean, abs=0.5)
        if half is not None:
            assert m["bytes_per_skill"]["half_width"] == pytest.approx(half, abs=0.5)
    naive = methods["naive_ft"]["accuracy_matrix"]
    assert naive == [[pytest.approx(0.897, abs=1e-9), 0.1], [0.2, 0.9]]
    assert methods["joint"]["accuracy_matrix"] == [[0.95, 0.9]]


def sign_flip(diffs):
    """The exact two-sided sign-flip p, by enumerating every sign pattern here."""
    observed = abs(sum(diffs))
    sums = [abs(sum(s * d for s, d in zip(signs, diffs, strict=True)))
            for signs in itertools.product((1, -1), repeat=len(diffs))]
    return sum(v >= observed - 1e-12 for v in sums) / len(sums)


def test_graft_is_paired_with_each_method_by_skill_and_seed_on_the_final_row(doc):
    tests = {c["baseline"]: c for c in doc["paired_tests"]["comparisons"]}
    assert set(tests) == {"naive_ft", "joint"}
    graft = [RUNS["graft"][s]["accuracy_matrix"][-1] for s in (0, 1)]
    naive = [RUNS["naive_ft"][s]["accuracy_matrix"][-1] for s in (0, 1)]  # graft's seed 2 failed
    diffs = [g - b for gr, br in zip(graft, naive, strict=True)
             for g, b in zip(gr, br, strict=True)]
    c = tests["naive_ft"]
    assert (c["test"], c["n"], c["seeds"]) == ("sign-flip, exact", 4, [0, 1])
    assert c["difference"] == pytest.approx(statistics.mean(diffs), abs=5e-5)
    assert c["p_value"] == pytest.approx(sign_flip(diffs), rel=1e-3)
    assert c["low"] <= c["difference"] <= c["high"]
    j = tests["joint"]
    joint_diffs = [0.9 - 0.95, 0.8 - 0.9]  # graft seed 0 against joint's one seed
    assert (j["n"], j["seeds"]) == (2, [0])
    assert j["difference"] == pytest.approx(statistics.mean(joint_diffs), abs=5e-5)
    # two pairs cannot give p below 0.5, however far apart they are
    assert j["p_value"] == sign_flip(joint_diffs) == 0.5
    holm = sorted([c["p_value"], j["p_value"]])  # Holm over the two comparisons
    adjusted = [min(1, 2 * holm[0]), min(1, max(2 * holm[0], holm[1]))]
    assert sorted([c["holm_p"], j["holm_p"]]) == pytest.approx(adjusted, rel=1e-3)


def md_table(md: str, heading: str) -> dict[str, list[str]]:
    """A Markdown table's rows by their first cell."""
    block = md.split(f"## {heading}", 1)[1].split("\n\n", 2)[1]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in block.splitlines()[2:]]
    return {r[0]: r[1:] for r in rows}


def html_table(page: str, heading: str) -> dict[str, list[str]]:
    """An HTML table's rows by their first cell."""
    block = page.split(f"<h2>{heading}", 1)[1].split("</table>", 1)[0]
    return {cells[0]: cells[1:] for cells in
            (re.findall(r"<td>(.*?)</td>", row) for row in re.findall(r"<tr>(.*?)</tr>", block))
            if cells}


def numbers(text: str) -> list[float]:
    return [float(x) for x in re.findall(r"-?\d+(?:\.\d+)?", text)]


def flat(value) -> list[float]:
    if isinstance(value, dict):
        return [x for v in value.values() for x in flat(v)]
    if isinstance(value, list):
        return [x for v in value for x in flat(v)]
    return [float(value)] if isinstance(value, int | float) and not isinstance(value, bool) else []


def test_md_html_and_json_carry_the_same_numbers(doc):
    md, page = render_experiment_report(doc, "md"), render_experiment_report(doc, "html")
    assert json.loads(render_experiment_report(doc, "json")) == doc
    table, cells = md_table(md, "Methods"), html_table(page, "Methods")
    for m in doc["methods"]:
        row = table[m["label"]]
        assert cells[m["label"]] == row  # the HTML table shows what the Markdown shows
        shown = numbers(" ".join(row))
        assert shown and all(any(x == pytest.approx(y) for y in flat(m)) for x in shown), row
        acc = m["average_accuracy"]
        if acc["half_width"] is not None:
            assert f"{acc['mean']:.4f} ± {acc['half_width']:.4f}" in row
    for c in doc["paired_tests"]["comparisons"]:
        line = next(r for r in md.splitlines() if r.startswith(f"| graft | {c['baseline']} |"))
        shown = numbers(line.split("|", 3)[3])
        assert all(any(x == pytest.approx(y) for y in flat(c)) for x in shown), line
        assert f"{c['difference']:.4f}" in line and str(c["holm_p"]) in line
        assert f"[{c['low']:.4f}, {c['high']:.4f}]" in page
    # each mean matrix cell, in the Markdown table and in the HTML heatmap
    for m in doc["methods"]:
        for v in (v for row in m["accuracy_matrix"] for v in row):
            assert f"{v:.3f}" in md and f">{v:.3f}</text>" in page


def test_each_graft_runs_gate_verdicts_are_reported(doc):
    assert [(g["graft"], g["seed"], g["promoted"], g["of"]) for g in doc["gate"]] == \
        [("graft", 0, 2, 2), ("graft", 1, 1, 2)]
    assert doc["gate"][1]["verdicts"][1] == {"skill": "sort", "verdict": "rejected",
                                             "summary": "rejected: forgot arith: dropped +0.050"}
    md = render_experiment_report(doc, "md")
    assert "| graft | 1 | 1 of 2 | arith: promoted: all checks passed; sort: " \
        "rejected: forgot arith: dropped +0.050 |" in md
    assert json.loads(render_experiment_report(doc, "json"))["gate"] == doc["gate"]


def test_the_html_is_one_self_contained_page(doc):
    page = render_experiment_report(doc, "html")
    assert page.startswith("<!doctype html>") and page.rstrip().endswith("</html>")
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?!data:)""", page, re.I)
    assert not re.search(r"https?://", page) and "<script" not in page and "<link" not in page
    assert page.count("<svg") == len(doc["methods"]) + 1  # the heatmaps and the plot
    for m in doc["methods"]:  # one point per method in the plot
        assert f"font-size='11'>{m['label']}</text>" in page.split("<svg")[-1]


def test_failed_and_unfinished_runs_are_listed_and_left_out(doc):
    md, page = render_experiment_report(doc, "md"), render_experiment_report(doc, "html")
    assert [(f["method"], f["seed"], f["error"]) for f in doc["failed"]] == [("graft", 2, ERROR)]
    assert ERROR in md and ERROR in page
    assert [(x["method"], x["seed"], x["status"]) for x in doc["excluded"]] == \
        [("joint", 1, "cancelled"), ("joint", 2, "queued")]
    rows = md_table(md, "Runs not finished")
    assert sorted(r[2] for r in rows.values()) == ["cancelled", "queued"]
    assert "left out of every figure" in md
    assert (doc["experiment"]["runs"], doc["experiment"]["runs_reported"]) == (9, 6)


def test_one_seed_shows_the_value_and_no_interval(doc):
    joint = by_label(doc)["joint"]
    assert joint["n_seeds"] == 1 and joint["average_accuracy"] == \
        {"mean": 0.925, "half_width": None, "low": None, "high": None, "n": 1}
    row = md_table(render_experiment_report(doc, "md"), "Methods")["joint"]
    assert row[2] == "0.9250 (n_seeds=1)" and not any("±" in c for c in row)
    assert row[3:6] == ["—", "—", "—"]  # joint has no BWT, forgetting or FWT


def test_each_graft_policy_is_its_own_point_and_comparison(session):
    from skillstore.catalog.models import Experiment

    runs = {**RUNS, "graft": {0: {**RUNS["graft"][0], "policy": "compact"},
                              1: {**RUNS["graft"][1], "policy": "balanced"}, 2: ERROR}}
    doc = build_experiment_report(session, session.get(Experiment,
                                                       make_experiment(session, runs)))
    assert list(by_label(doc)) == ["graft (compact)", "graft (balanced)", "naive_ft", "joint"]
    assert by_label(doc)["graft (balanced)"]["average_accuracy"]["mean"] == 0.9
    pairs = [(c["graft"], c["baseline"]) for c in doc["paired_tests"]["comparisons"]]
    assert pairs == [("graft (compact)", "naive_ft"), ("graft (compact)", "joint"),
                     ("graft (balanced)", "naive_ft")]
    # balanced ran seed 1 only, joint seed 0 only: nothing to pair, and the report says so
    assert doc["paired_tests"]["untested"] == [{"graft": "graft (balanced)",
                                                "baseline": "joint"}]
    assert md_table(render_experiment_report(doc, "md"), "Not tested") == \
        {"graft (balanced)": ["joint"]}
    plot = render_experiment_report(doc, "html").split("<svg")[-1]
    assert ">graft (compact)</text>" in plot and ">graft (balanced)</text>" in plot


def test_no_finished_run_is_an_error_naming_wait(session):
    from skillstore.catalog.models import Experiment
    from skillstore.errors import JobError

    queued = {m: {s: JobStatus.queued for s in (0, 1, 2)} for m in RUNS}
    experiment = session.get(Experiment, make_experiment(session, queued))
    with pytest.raises(JobError, match=r"no finished run yet \(queued 9\); wait for it with "
                                       rf"`skillstore experiment wait {experiment.id}`"):
        build_experiment_report(session, experiment)
    failed = {m: {s: ERROR for s in (0, 1, 2)} for m in RUNS}  # waiting would not help
    experiment = session.get(Experiment, make_experiment(session, failed))
    with pytest.raises(JobError, match=r"no run that succeeded \(failed 9\); see each run's "
                                       rf"error with `skillstore experiment show {experiment.id}`"):
        build_experiment_report(session, experiment)


def test_the_cli_reports_in_every_format_and_refuses_bad_input(catalog, tmp_path, capsys):  # noqa: F811
    with catalog.session() as s:
        exp_id = make_experiment(s)
        waiting = make_experiment(s, {m: {n: JobStatus.running for n in (0, 1, 2)} for m in RUNS})
    code, out, err = run_cli(capsys, "experiment", "report", str(exp_id), "--format", "json")
    assert code == 0, err
    doc = json.loads(out)
    assert by_label(doc)["naive_ft"]["average_accuracy"]["mean"] == pytest.approx(0.55)
    code, out, err = run_cli(capsys, "experiment", "report", str(exp_id))
    assert code == 0 and out.startswith(f"# Experiment {exp_id}: two-skills") and ERROR in out
    path = tmp_path / "report.html"
    code, out, err = run_cli(capsys, "experiment", "report", str(exp_id), "--format", "html",
                             "-o", str(path))
    assert code == 0 and out == f"Wrote {path}\n"
    assert path.read_text() == render_experiment_report(doc, "html")

    code, out, err = run_cli(capsys, "experiment", "report", str(exp_id), "--format", "pdf")
    assert code == 1 and err.count("\n") == 1 and err.startswith(
        "error: Unknown experiment report format 'pdf'.") and "html, json, md" in err, err
    code, out, err = run_cli(capsys, "experiment", "report", "42")
    assert code == 1 and err == "error: No experiment '42'; list them with `skillstore " \
                                "experiment list`.\n"
    code, out, err = run_cli(capsys, "experiment", "report", str(waiting))
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in out + err
    assert f"wait for it with `skillstore experiment wait {waiting}`" in err


def test_the_api_serves_the_report_in_every_format(catalog):  # noqa: F811
    from skillstore.api import create_api

    with catalog.session() as s:
        exp_id = make_experiment(s)
        waiting = make_experiment(s, {m: {n: JobStatus.queued for n in (0, 1, 2)} for m in RUNS})
    with catalog.session() as s:
        from skillstore.catalog.models import Experiment

        doc = build_experiment_report(s, s.get(Experiment, exp_id))
    with TestClient(create_api(catalog.settings)) as client:
        got = client.get(f"/experiments/{exp_id}/report", headers=AUTH)
        assert got.status_code == 200 and got.json() == doc
        page = client.get(f"/experiments/{exp_id}/report?format=html", headers=AUTH)
        assert page.headers["content-type"].startswith("text/html")
        assert page.text == render_experiment_report(doc, "html")
        md = client.get(f"/experiments/{exp_id}/report?format=md", headers=AUTH)
        assert md.headers["content-type"].startswith("text/markdown")
        assert md.text == render_experiment_report(doc, "md")
        assert client.get(f"/experiments/{exp_id}/report?format=pdf",
                          headers=AUTH).status_code == 422
        assert client.get("/experiments/42/report", headers=AUTH).status_code == 404
        conflict = client.get(f"/experiments/{waiting}/report", headers=AUTH)
        assert conflict.status_code == 409
        assert f"skillstore experiment wait {waiting}" in conflict.json()["error"]["message"]
