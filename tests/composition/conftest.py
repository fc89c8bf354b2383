"""Fixtures for composition tests: a tiny base with real packs in a real catalog."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from .tinymodel import perturbed_copy, save, tiny_llama, tiny_tokenizer

PACK_TENSORS = {
    "alpha": ("model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight",
              "model.norm.weight"),
    "beta": ("model.layers.1.self_attn.v_proj.weight", "model.layers.0.mlp.up_proj.weight",
             "lm_head.weight"),
}


@dataclass
class TinyWorld:
    base_dir: Path
    packs: dict[str, Path]  # skill name -> pack file


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> TinyWorld:
    """A saved tiny base and one lossless pack per skill (alpha, beta), built once per session."""
    from skillstore.packs.compress import compress_checkpoint

    root = tmp_path_factory.mktemp("tiny_world")
    tok = tiny_tokenizer()
    base = tiny_llama(tok)
    base_dir = save(base, tok, root / "base")
    packs = {}
    for i, (skill, names) in enumerate(PACK_TENSORS.items()):
        tuned_dir = save(perturbed_copy(base, 10 + i, names), tok, root / f"tuned_{skill}")
        packs[skill] = compress_checkpoint(base_dir, tuned_dir, "lossless",
                                           root / f"{skill}.safetensors").path
    return TinyWorld(base_dir, packs)


@pytest.fixture
def catalog(workspace):
    from skillstore.catalog import init_workspace

    cat = init_workspace()
    yield cat
    cat.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_engine(request, tmp_path):
    """A migrated catalog engine on SQLite and on PostgreSQL (wiped per test)."""
    from skillstore.catalog import migrate
    from skillstore.catalog.db import make_engine

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'catalog.db'}"
    else:
        url = request.getfixturevalue("pg_url")
        eng = make_engine(url)
        with eng.begin() as conn:
            conn.exec_driver_sql("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
        eng.dispose()
    migrate.upgrade(url)
    eng = make_engine(url)
    yield eng
    eng.dispose()


def digest(text: str) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def make_base(session, name="tiny", fingerprint=None, uri="/models/tiny"):
    from skillstore.catalog import register_base

    return register_base(session, name=name, uri=uri, architecture="LlamaForCausalLM",
                         fingerprint=fingerprint or digest(name),
                         tokenizer_fingerprint=digest(name + "-tok"))


def make_pack(session, base, skill_name, blob_digest=None, size_bytes=1000):
    from skillstore.catalog import add_skill, create_pack, get_skill
    from skillstore.errors import NotFoundError

    try:
        skill = get_skill(session, skill_name)
    except NotFoundError:
        skill = add_skill(session, name=skill_name, suite=f"skillstore_{skill_name}")
    return create_pack(session, skill=skill, base=base,
                       blob_digest=blob_digest or digest(skill_name),
                       size_bytes=size_bytes, format_version=1, method="sft",
                       compression_ratio=10.0, codecs={"attention": ["lowrank"]})


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared 2-core box they contend."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
