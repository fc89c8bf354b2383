"""`skillstore demo`'s pieces that need no training: its spec cut to the skills asked for, and
its methods table, which a one-skill demo (no BWT, no forgetting) must still print."""

from __future__ import annotations

import pytest
from rich.console import Console

from skillstore.cli.demo import _demo_spec, _methods_table
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
