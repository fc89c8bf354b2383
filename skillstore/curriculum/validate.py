"""Validation of user JSONL datasets: refused at registration with the file and line number."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import DatasetError, unknown_name
from ..fingerprint import sha256_file

#: The string fields each kind of dataset must carry on every line.
REQUIRED_FIELDS: dict[str, tuple[str, ...]] = {
    "sft": ("prompt", "answer"),
    "dpo": ("prompt", "chosen", "rejected"),
}


@dataclass(frozen=True)
class DatasetSummary:
    """What registration records about a valid dataset file."""

    path: Path
    kind: str
    n_rows: int
    sha256: str


def _fields_for(kind: str) -> tuple[str, ...]:
    if kind not in REQUIRED_FIELDS:
        raise unknown_name("dataset kind", kind, tuple(REQUIRED_FIELDS))
    return REQUIRED_FIELDS[kind]


def _check_row(row: object, fields: tuple[str, ...], where: str) -> None:
    if not isinstance(row, dict):
        raise DatasetError(
            f"{where}: expected a JSON object, got {type(row).__name__}; "
            f"write one object per line with fields {', '.join(fields)}."
        )
    missing = [f for f in fields if f not in row]
    if missing:
        raise DatasetError(
            f"{where}: missing field {', '.join(repr(m) for m in missing)}; "
            f"every line needs {', '.join(fields)}."
        )
    for f in fields:
        if not isinstance(row[f], str):
            raise DatasetError(
                f"{where}: field {f!r} is {type(row[f]).__name__}, not a string; "
                "quote the value as a JSON string."
            )


def iter_rows(path: str | Path, kind: str = "sft"):
    """Yield the validated rows of a JSONL file (blank lines are skipped)."""
    for _, row in iter_numbered_rows(path, kind):
        yield row


def iter_numbered_rows(path: str | Path, kind: str = "sft"):
    """Yield (line number, row) for the validated rows of a JSONL file (blank lines skipped)."""
    fields = _fields_for(kind)
    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"Dataset {str(p)!r} does not exist; pass the path of a JSONL file.")
    with open(p, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            where = f"{p}:{lineno}"
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DatasetError(
                    f"{where}: not valid UTF-8 (byte {exc.start}); re-save the file as UTF-8."
                ) from None
            if lineno == 1:
                text = text.removeprefix("\ufeff")
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as exc:
                raise DatasetError(
                    f"{where}: invalid JSON ({exc.msg} at column {exc.colno}); "
                    "write exactly one JSON object per line."
                ) from None
            _check_row(row, fields, where)
            yield lineno, row


def load_rows(path: str | Path, kind: str = "sft") -> list[dict]:
    """All validated rows of a JSONL file; an empty file is refused."""
    rows = list(iter_rows(path, kind))
    if not rows:
        raise DatasetError(
            f"Dataset {str(path)!r} has no rows; add at least one line with "
            f"{', '.join(_fields_for(kind))}."
        )
    return rows


def validate_dataset(path: str | Path, kind: str = "sft") -> DatasetSummary:
    """Check every line of a JSONL dataset and return its row count and digest.

    Raises DatasetError naming the file, the line and the fix for: a missing file, an
    empty file, bytes that are not UTF-8, a line that is not JSON, a missing field, or a
    field that is not a string. ``kind`` is ``"sft"`` (prompt/answer) or ``"dpo"``
    (prompt/chosen/rejected).
    """
    rows = load_rows(path, kind)
    return DatasetSummary(path=Path(path).absolute(), kind=kind, n_rows=len(rows),
                          sha256=sha256_file(path))


def write_jsonl(path: str | Path, rows: list[dict]) -> Path:
    """Write rows as UTF-8 JSONL (one object per line) and return the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return p
