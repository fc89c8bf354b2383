"""`skillstore skill add` with only a JSONL: the held-out split it records, one-line refusals."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli as run


def rows_file(path, n: int, answer=lambda k: f" {k + 1}"):
    path.write_text("".join(json.dumps({"prompt": f"After {k} comes", "answer": answer(k)}) + "\n"
                            for k in range(100, 100 + n)))
    return str(path)


@pytest.fixture
def ready(workspace, capsys):
    assert run(capsys, "init")[0] == 0
    return workspace


def fails(capsys, *args: str, match: str) -> str:
    code, out, err = run(capsys, *args)
    assert code == 1, (out, err)
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err + out
    assert match in err, err
    return err


def test_skill_add_without_a_suite_holds_out_a_test_split(ready, tmp_path, capsys):
    data = rows_file(tmp_path / "succ.jsonl", 300)
    code, out, err = run(capsys, "skill", "add", "successor", "--data", data, "--seed", "5",
                         "--test-size", "75", "--metric", "number", "--json")
    assert code == 0, err
    skill = json.loads(out)
    held = skill["heldout"]
    assert (held["seed"], held["n_train"], held["n_test"], held["metric"]) == (5, 225, 75, "number")
    assert skill["suite"].startswith(str(ready / "suites" / "successor"))
    assert skill["suite"].endswith("skillstore_successor.yaml")
    code, out, _ = run(capsys, "gc", "--min-age-minutes", "0", "--json")
    assert json.loads(out)["unreferenced"] == []  # the data and both halves are referenced


def test_skill_add_refusals_are_one_line(ready, tmp_path, capsys):
    few = rows_file(tmp_path / "few.jsonl", 120)
    err = fails(capsys, "skill", "add", "s", "--data", few, match="too small to judge")
    assert few in err
    words = rows_file(tmp_path / "words.jsonl", 300, answer=lambda k: " next")
    fails(capsys, "skill", "add", "s", "--data", words, "--metric", "number",
          match=f"{words}:1: answer ' next' has no number")
    fails(capsys, "skill", "add", "s", "--data", words, "--metric", "exactmatch",
          match="Did you mean 'exact_match'")
    task = tmp_path / "mine.yaml"
    task.write_text("task: mine\n")
    fails(capsys, "skill", "add", "s", "--data", words, "--suite", str(task), "--seed", "1",
          match="seed (--seed) sets the held-out split")
    code, out, _ = run(capsys, "skill", "list", "--json")
    assert json.loads(out) == [] and not (ready / "suites").exists()


def test_skill_add_help_names_the_split_options(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    code, out, _ = run(capsys, "skill", "add", "--help")
    assert code == 0
    for flag in ("--suite", "--seed", "--test-size", "--metric", "held-out", "loglikelihood",
                 "792, at most a fifth of the rows", "(exact_match)"):
        assert flag in out, flag
