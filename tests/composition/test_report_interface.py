"""The report-format contract on every registered format: one in REPORT_FORMATS is checked here."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser

import pytest

from skillstore.reports.data import ReportData
from skillstore.reports.render import REPORT_FORMATS, ReportFormat


def full() -> ReportData:
    return ReportData(
        title="Report of state 7",
        state={"id": 7, "base": "tiny", "router": "none", "fingerprint": "sha256:ab12"},
        skills=["alpha", "beta"], accuracy_matrix=[[0.91, 0.12], [0.873, 0.954]],
        base_scores=[0.1, 0.05], general=[0.8, 0.79, 0.78],
        metrics={"average_accuracy": 0.9135, "bwt": -0.037, "forgetting": 0.037,
                 "forward_transfer": 0.07},
        decision={"verdict": "promoted", "reasons": ["beta improved by 0.834"]},
        deltas=[{"suite": "alpha", "before": 0.91, "after": 0.873, "delta": -0.037, "ci_low": -0.06,
                 "ci_high": -0.01, "n": 200}],
        packs=[{"skill": "beta", "version": 1, "pack_id": 3, "scale": 1.0, "size_bytes": 4321,
                "compression_ratio": 12.5, "codecs": {"attention": ["lowrank"]},
                "status": "promoted"}],
        lineage={"edges": [{"child": "state 7", "parent": "state 6", "kind": "extends"}]},
        baselines={"sequential_ft": {"skills": ["alpha", "beta"],
                                     "accuracy_matrix": [[0.9, 0.1], [0.3, 0.95]],
                                     "average_accuracy": 0.625, "bwt": -0.6, "forgetting": 0.6}})


def bare() -> ReportData:
    """The report of a base state: nothing learned, judged or packed yet."""
    return ReportData(title="Report of state 1", state={"id": 1, "base": "tiny", "router": "none",
                                                        "fingerprint": "sha256:00"},
                      skills=[], accuracy_matrix=[], base_scores=[], general=[], metrics=None,
                      decision=None)


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)


def _html(text: str, data: ReportData) -> None:
    assert re.match(r"(?i)<!doctype html>", text) and "<html" in text
    parser = _Tags()
    parser.feed(text)
    assert {"html", "head", "body", "h1"} <= set(parser.tags)
    if data.skills:
        assert "table" in parser.tags


def _markdown(text: str, data: ReportData) -> None:
    assert text.startswith(f"# {data.title}")
    lines = text.splitlines()
    assert any(a.startswith("| ") and re.fullmatch(r"\|(---\|)+", b)
               for a, b in zip(lines, lines[1:], strict=False))


def _json(text: str, data: ReportData) -> None:
    assert json.loads(text) == json.loads(json.dumps(data.as_json()))


# What a document of each media type must be; a format with a new media type adds its check here.
CHECKS = {"text/html": _html, "text/markdown": _markdown, "application/json": _json}


@pytest.mark.parametrize("data", [full(), bare()], ids=["full", "bare"])
@pytest.mark.parametrize("fmt", list(REPORT_FORMATS.values()), ids=list(REPORT_FORMATS))
def test_format_renders_a_document_of_its_media_type(fmt, data):
    assert isinstance(fmt, ReportFormat)
    text = fmt.render(data)
    assert isinstance(text, str) and text.strip()
    kind = fmt.media_type.split(";")[0].strip()
    assert kind in CHECKS, f"report format {fmt.name!r}: add a check for {kind!r} to CHECKS"
    CHECKS[kind](text, data)
    for fact in (data.title, *data.skills, (data.decision or {}).get("verdict", "")):
        assert fact in text
    if data.metrics:
        assert re.search(r"-0\.037\b", text), "the BWT is missing"
