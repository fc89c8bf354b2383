"""Tiny builders of catalog rows for tests."""

from __future__ import annotations

import hashlib

from skillstore.catalog import add_skill, create_pack, register_base
from tests.conftest import require_service  # noqa: F401  (re-exported for the catalog tests)


def digest(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def base(session, name="tiny"):
    return register_base(session, name=name, uri=f"/models/{name}", architecture="LlamaForCausalLM",
                         fingerprint=digest(name), tokenizer_fingerprint=digest(name + "-tok"))


def skill(session, name="arith"):
    return add_skill(session, name=name, suite=f"{name}_suite", description=name)


def pack(session, skill_row, base_row, parents=(), tag=None, method="sft"):
    return create_pack(session, skill=skill_row, base=base_row,
                       blob_digest=digest(tag or f"{skill_row.name}-{id(parents)}-{len(parents)}"),
                       size_bytes=1000, format_version=1, method=method, parents=parents,
                       compression_ratio=8.0, codecs={"attn": "lowrank(r=8)"})
