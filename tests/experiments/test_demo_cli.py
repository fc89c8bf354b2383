"""`skillstore demo`'s pieces that need no training: its spec cut to the skills asked for, and
its methods table, which a one-skill demo (no BWT, no forgetting) must still print."""

from __future__ import annotations

import pytest
from rich.console import Console

from skillstore.cli.demo import _demo_spec, _methods_table, _metrics_line, _packs_rows_table
from skillstore.errors import ConfigError


def test_the_demo_spec_keeps_the_skills_asked_for_in_its_own_order():
    assert [s.name for s in _demo_spec(None).skills] == ["reverse", "sort", "add", "case",
                                                          "knowledge"]
    assert [s.name for s in _demo_spec(["case", "reverse"]).skills] == ["reverse", "case"]
    with pytest.raises(ConfigError, match="no skill 'swap'; choose among reverse, sort"):
        _demo_spec(["reverse", "swap"])


def stat(mean):
    return {"mean": mean, "low": None, "high": None, "half_width": None, "n": 1}


def test_the_methods_table_prints_a_dash_where_a_metric_needs_two_skills():
    doc = {"experiment": {"id": 4}, "methods": [
        {"label": "graft (compact @ 4.7%)", "seeds": [0], "average_accuracy": stat(0.52),
         "bwt": stat(None), "forgetting": None, "bytes_per_skill": stat(45277)},
        {"label": "naive_ft", "seeds": [0], "average_accuracy": stat(0.5),
         "bwt": stat(-0.25), "forgetting": stat(0.25), "bytes_per_skill": stat(889088)}]}
    console = Console(width=120, record=True)
    console.print(_methods_table(doc))
    lines = console.export_text().splitlines()
    graft = next(line for line in lines if "graft" in line)
    naive = next(line for line in lines if "naive_ft" in line)
    assert graft.count("—") == 2 and "0.520" in graft and "45,277" in graft  # BWT, forgetting
    assert "-0.250" in naive and "0.250" in naive and "889,088" in naive


def test_the_held_out_line_averages_the_learned_skills_when_the_others_were_not_scored():
    """On held-out templates only the head's skills are scored: the average is over the
    learned ones (it printed "—" whenever a pack was held back), and BWT needs two of them."""
    from skillstore.evaluation.metrics import continual_metrics

    def line(matrix, held):
        return _metrics_line("held out", {"skills": list("abc")[:len(held)], "held": held,
                                          "metrics": continual_metrics(matrix, learned=held)
                                          .as_dict()})

    one = line([[0.5, None, None], [0.5, None, None], [0.5, None, None]], [True, False, False])
    assert one == ("held out                     avg acc 0.500 (the 1 learned skill(s)); BWT "
                   "and forgetting need two learned skills")
    two = line([[0.6, None, None], [0.6, None, None], [0.4, None, 0.8]], [True, False, True])
    assert two.endswith("avg acc 0.600 (the 2 learned skill(s))   BWT -0.200   forgetting "
                        "0.200 (learned skills)"), two
    every = line([[0.6, 0.0], [0.5, 0.9]], [True, True])
    assert "avg acc 0.700 (all 2 skills)   BWT -0.100" in every, every


def test_the_packs_table_cuts_no_name_or_status_at_80_columns():
    """At 80 columns rich cut "inconclusive" to "inconclus…" and "knowledge@v1" to
    "knowledge…"; those columns now keep their width and the numbers' headers wrap."""
    rows = [{"pack": name, "status": status, "method": "sft", "bytes": 44302,
             "dense": 904448, "ratio": 20.4, "rel_error": 0.454}
            for name, status in (("knowledge@v1", "promoted"), ("sort@v1", "inconclusive"))]
    console = Console(width=80, record=True)
    console.print(_packs_rows_table(rows))
    text = console.export_text()
    assert "knowledge@v1" in text and "inconclusive" in text and "…" not in text, text
    assert max(len(line) for line in text.splitlines()) <= 80
