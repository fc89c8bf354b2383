"""A skill's rows as the catalog holds them: its training and validation splits, checked on read."""

from __future__ import annotations

import json
import random
from pathlib import Path

from .catalog.models import Skill
from .curriculum.validate import load_rows
from .errors import DatasetError

VAL_FRACTION = 0.1


def skill_rows(store, skill: Skill) -> tuple[list[dict], list[dict]]:
    """(train, validation) rows of a skill: its registered data (from the blob store when it is
    there, so a later edit of the file cannot change a job) and a sibling validation.jsonl,
    else a tenth of the training rows, picked by a shuffle seeded with the skill's name.

    A skill with a held-out split (``skill.heldout``) trains on its training half only; its
    validation rows are carved from that half too, so no job ever sees a test row.
    """
    if skill.heldout:
        return _carve(read_rows(store, skill.heldout["train_sha256"]), skill.name)
    if skill.data_sha256 and store.exists(skill.data_sha256):
        train = load_rows(store.local_path(skill.data_sha256))
    elif skill.data_uri:
        train = load_rows(skill.data_uri)
    else:  # uploaded data (no file recorded) whose blob is gone
        raise DatasetError(
            f"Skill {skill.name!r} has no training data: its blob {skill.data_sha256 or '(none)'} "
            f"is not in the blob store and no file is recorded; add the same file again "
            f"(`skillstore skill add {skill.name} --data FILE --suite {skill.suite}`) to store it.")
    val_path = Path(skill.data_uri).with_name("validation.jsonl") if skill.data_uri else None
    if val_path is not None and val_path.is_file():
        return train, load_rows(val_path)
    return _carve(train, skill.name)


def _carve(train: list[dict], seed: str) -> tuple[list[dict], list[dict]]:
    rows = list(train)
    random.Random(seed).shuffle(rows)
    cut = max(1, int(len(rows) * VAL_FRACTION))
    return rows[cut:], rows[:cut]


def rows_bytes(rows: list[dict]) -> bytes:
    """Rows as JSONL bytes, keys sorted: the same rows, the same bytes."""
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n"
                   for r in rows).encode("utf-8")


def rows_blob(store, rows: list[dict]) -> str:
    """Store rows as a JSONL blob; returns its digest (the same rows, the same digest)."""
    return store.put_bytes(rows_bytes(rows))


def read_rows(store, digest: str, kind: str = "sft") -> list[dict]:
    """Rows of a JSONL blob, checked like a user's file (the blob is verified on read)."""
    return load_rows(store.local_path(digest), kind)
