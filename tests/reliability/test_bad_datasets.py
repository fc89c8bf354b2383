"""Malformed datasets through `skillstore skill add`: one line naming file and line, nothing stored.

tests/learning/test_validate.py checks the validator itself; this checks the command a user
runs, and that a refused file leaves no skill row and no blob behind.
"""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from skillstore.catalog import init_workspace
from skillstore.catalog.models import Skill
from skillstore.settings import Settings

from .faults import tree_files
from .test_corrupt_artifacts import cli

GOOD = json.dumps({"prompt": "2+2=", "answer": "4"})
# (file bytes, line the error must name, words it must contain)
CASES = {
    "missing-field": ((GOOD + "\n" + json.dumps({"prompt": "3+3="}) + "\n").encode(), 2,
                      "missing field 'answer'"),
    "invalid-json": ((GOOD + "\n" + GOOD + "\n{\"prompt\": \"1+1=\", \"answer\": \n").encode(), 3,
                     "invalid JSON"),
    "not-an-object": ((GOOD + "\n[1, 2]\n").encode(), 2, "expected a JSON object"),
    "not-a-string": ((json.dumps({"prompt": "1+1=", "answer": 2}) + "\n").encode(), 1,
                     "not a string"),
    "wrong-encoding": ((GOOD + "\n" + json.dumps({"prompt": "café", "answer": "x"},
                                                 ensure_ascii=False) + "\n").encode("latin-1"), 2,
                       "not valid UTF-8"),
    "empty": (b"", None, "has no rows"),
    "only-blank-lines": (b"\n\n  \n", None, "has no rows"),
}


@pytest.fixture
def ready(tmp_path, monkeypatch):
    settings = Settings(home=tmp_path / "ws")
    for var in ("DATABASE_URL", "BLOB_URL", "BROKER_URL", "RESULT_BACKEND"):
        monkeypatch.delenv(f"SKILLSTORE_{var}", raising=False)
    monkeypatch.setenv("SKILLSTORE_HOME", str(settings.home))
    catalog = init_workspace(settings)
    yield catalog
    catalog.close()


@pytest.mark.parametrize("case", CASES)
def test_skill_add_refuses_malformed_data(case, ready, tmp_path, capsys):
    content, line, words = CASES[case]
    data = tmp_path / f"{case}.jsonl"
    data.write_bytes(content)
    blobs_before = tree_files(ready.settings.home / "blobs")
    code, out, err = cli(capsys, "skill", "add", "arith", "--data", str(data))
    assert code == 1, (out, err)
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in out + err, err
    assert words in err and str(data) in err, err
    if line is not None:
        assert f"{data}:{line}:" in err, err
    with ready.session() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(Skill)) == 0
    assert tree_files(ready.settings.home / "blobs") == blobs_before


def test_skill_add_accepts_the_good_file(ready, tmp_path, capsys):
    """The control: the same command registers a well-formed file, and stores it once."""
    data = tmp_path / "good.jsonl"
    data.write_text(GOOD + "\n")
    code, out, err = cli(capsys, "skill", "add", "arith", "--data", str(data), "--suite",
                         "arith", "--json")
    assert code == 0, err
    assert json.loads(out)["name"] == "arith"
    assert len(tree_files(ready.settings.home / "blobs")) == 1
