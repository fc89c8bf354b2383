"""Dataset validation: every malformed case is refused with the file, the line and a fix."""

from __future__ import annotations

import json

import pytest

from skillstore.curriculum.validate import validate_dataset
from skillstore.errors import DatasetError, SkillstoreError
from skillstore.fingerprint import sha256_file

GOOD = {"prompt": "reverse: abc =", "answer": "cba"}


def _write(path, lines: list[bytes]) -> str:
    path.write_bytes(b"".join(lines))
    return str(path)


def test_valid_file_reports_rows_and_digest(tmp_path):
    path = _write(tmp_path / "ok.jsonl", [json.dumps(GOOD).encode() + b"\n"] * 3 + [b"\n"])
    summary = validate_dataset(path)
    assert summary.n_rows == 3
    assert summary.sha256 == sha256_file(path)
    assert summary.kind == "sft"


@pytest.mark.parametrize(
    ("lines", "needle"),
    [
        ([], "no rows"),
        ([b"\n", b"   \n"], "no rows"),
        ([json.dumps(GOOD).encode() + b"\n", b'{"prompt": "a", "answer": "\xff\xfe"}\n'],
         ":2: not valid UTF-8"),
        ([b'{"prompt": "a", "answer": }\n'], ":1: invalid JSON"),
        ([json.dumps(GOOD).encode() + b"\n", b'{"prompt": "a"}\n'], ":2: missing field 'answer'"),
        ([b'{"answer": "a"}\n'], ":1: missing field 'prompt'"),
        ([b'{"prompt": "a", "answer": 3}\n'], ":1: field 'answer' is int"),
        ([b'["prompt", "answer"]\n'], ":1: expected a JSON object"),
    ],
    ids=["empty", "blank-lines-only", "bad-utf8", "bad-json", "missing-answer", "missing-prompt",
         "non-string", "not-an-object"],
)
def test_malformed_files_are_refused_with_line(tmp_path, lines, needle):
    path = _write(tmp_path / "bad.jsonl", lines)
    with pytest.raises(DatasetError) as err:
        validate_dataset(path)
    message = str(err.value)
    assert needle in message
    assert "bad.jsonl" in message
    assert "\n" not in message
    assert isinstance(err.value, SkillstoreError) and isinstance(err.value, ValueError)


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        validate_dataset(tmp_path / "nope.jsonl")


def test_latin1_file_is_refused_as_wrong_encoding(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(
        json.dumps({"prompt": "café", "answer": "x"}, ensure_ascii=False).encode("latin-1") + b"\n")
    with pytest.raises(DatasetError, match=r"latin1\.jsonl:1: not valid UTF-8"):
        validate_dataset(path)


def test_dpo_kind_needs_chosen_and_rejected(tmp_path):
    path = _write(tmp_path / "prefs.jsonl",
                  [json.dumps({"prompt": "p", "chosen": "a"}).encode() + b"\n"])
    with pytest.raises(DatasetError, match="missing field 'rejected'"):
        validate_dataset(path, kind="dpo")
    ok = _write(tmp_path / "ok.jsonl",
                [json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}).encode() + b"\n"])
    assert validate_dataset(ok, kind="dpo").n_rows == 1
    with pytest.raises(DatasetError, match="missing field 'answer'"):
        validate_dataset(ok, kind="sft")


def test_unknown_kind_lists_valid_kinds(tmp_path):
    path = _write(tmp_path / "ok.jsonl", [json.dumps(GOOD).encode() + b"\n"])
    with pytest.raises(SkillstoreError, match="Valid names: dpo, sft"):
        validate_dataset(path, kind="sfft")
