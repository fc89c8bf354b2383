"""The catalog CLI: happy paths, `--json`, and one-line errors (never a traceback)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from factories import digest
from safetensors.torch import save_file

from skillstore.catalog import (
    add_edge,
    create_job,
    create_pack,
    get_base,
    get_skill,
    open_catalog,
    set_pack_status,
)
from skillstore.catalog.models import SkillPack
from tests.conftest import run_cli as run


def fails(capsys, *args: str, match: str) -> str:
    code, out, err = run(capsys, *args)
    assert code == 1, (out, err)
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err + out
    assert match in err, err
    return err


@pytest.fixture
def ready(workspace, capsys):
    assert run(capsys, "init")[0] == 0
    return workspace


@pytest.fixture
def checkpoint(tmp_path):
    """A minimal checkpoint folder: weights, config and tokenizer files."""
    folder = tmp_path / "tiny"
    folder.mkdir()
    gen = torch.Generator().manual_seed(0)
    save_file({"model.embed_tokens.weight": torch.randn(8, 4, generator=gen),
               "lm_head.weight": torch.randn(8, 4, generator=gen)},
              str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    (folder / "tokenizer.json").write_text("{}")
    return folder


def test_init_is_idempotent_and_pack_list_works(workspace, capsys):
    assert run(capsys, "init")[0] == 0
    code, out, _ = run(capsys, "init", "--json")
    assert code == 0 and json.loads(out)["home"] == str(workspace)
    code, out, _ = run(capsys, "pack", "list", "--json")
    assert code == 0 and json.loads(out) == []


def test_console_script_on_default_workspace(tmp_path):
    """`skillstore init && skillstore pack list --json` with no settings at all."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKILLSTORE_")}
    exe = [sys.executable, "-m", "skillstore.cli"]
    first = subprocess.run([*exe, "pack", "list"], cwd=tmp_path, env=env, capture_output=True,
                           text=True)
    assert first.returncode == 1 and "never initialised" in first.stderr
    assert "Traceback" not in first.stderr
    assert subprocess.run([*exe, "init"], cwd=tmp_path, env=env).returncode == 0
    done = subprocess.run([*exe, "pack", "list", "--json"], cwd=tmp_path, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0 and json.loads(done.stdout) == []
    assert (tmp_path / ".skillstore" / "catalog.db").is_file()


def test_base_and_skill_registration(ready, capsys, checkpoint, tmp_path):
    code, out, _ = run(capsys, "base", "add", "tiny", str(checkpoint), "--json",
                       "--no-general-suite")
    assert code == 0
    doc = json.loads(out)
    from skillstore.fingerprint import fingerprint_checkpoint
    assert doc["fingerprint"] == fingerprint_checkpoint(checkpoint)
    assert doc["architecture"] == "LlamaForCausalLM" and doc["tokenizer_fingerprint"]
    fails(capsys, "base", "add", "twin", str(checkpoint), match="already registered as base 'tiny'")
    code, out, _ = run(capsys, "base", "list", "--json")
    assert [b["name"] for b in json.loads(out)] == ["tiny"]
    assert "tiny" in run(capsys, "base", "list")[1]

    data = tmp_path / "arith.jsonl"
    data.write_text('{"prompt": "1+1=", "answer": "2"}\n')  # the format skill add checks
    code, out, _ = run(capsys, "skill", "add", "arith", "--data", str(data), "--suite", "arith",
                       "--json")
    assert code == 0
    skill = json.loads(out)
    assert skill["suite"] == "arith" and skill["data_sha256"].startswith("sha256:")
    with open_catalog() as catalog:
        assert catalog.blobs.get_bytes(skill["data_sha256"]) == data.read_bytes()
    code, out, _ = run(capsys, "skill", "show", "arith", "--json")
    assert json.loads(out)["id"] == skill["id"]
    code, out, _ = run(capsys, "gc", "--min-age-minutes", "0", "--json")
    assert json.loads(out)["unreferenced"] == []  # the dataset blob is referenced


def _seed_packs():
    """A diamond: v1 <- v2, v1 <- v3, (v2, v3) <- v4; returns pack ids."""
    from skillstore.catalog import add_skill, register_base
    with open_catalog() as catalog, catalog.session() as s:
        b = register_base(s, name="tiny", uri="/m", architecture="Llama", fingerprint=digest("b"))
        k = add_skill(s, name="arith", suite="arith")
        mk = dict(skill=k, base=b, size_bytes=10, format_version=1, method="sft")
        p1 = create_pack(s, blob_digest=digest("1"), **mk)
        p2 = create_pack(s, blob_digest=digest("2"), parents=[(p1, "recompressed_from")], **mk)
        p3 = create_pack(s, blob_digest=digest("3"), parents=[(p1, "distilled_from")], **mk)
        p4 = create_pack(s, blob_digest=digest("4"), parents=[(p2, "fused_from")], **mk)
        add_edge(s, p4, p3, "fused_from")
        set_pack_status(s, p4, "promoted", reason="gate passed", actor="gate")
        job = create_job(s, kind="learn", request={"skill": "arith", "sft": {"max_steps": 7}},
                         base_id=b.id, skill_id=get_skill(s, "arith").id)
        assert get_base(s, "tiny").id == b.id
        return [p.id for p in (p1, p2, p3, p4)], job.id


def test_pack_and_job_views(ready, capsys):
    (p1, p2, p3, p4), job_id = _seed_packs()
    code, out, _ = run(capsys, "pack", "list", "--json", "--status", "promoted", "--skill", "arith")
    assert [p["id"] for p in json.loads(out)] == [p4]
    code, out, _ = run(capsys, "pack", "list", "--limit", "2")
    assert code == 0 and "arith@v4" in out and "1-2 of 4" in out
    with open_catalog() as catalog, catalog.session() as s:  # as the gate records it
        set_pack_status(s, s.get(SkillPack, p3), "rejected", actor="gate",
                        reason="inconclusive: needs n ≈ 480 per suite; reverse: dropped +0.020")
        set_pack_status(s, s.get(SkillPack, p2), "rejected", actor="gate",
                        reason="rejected: forgot reverse: dropped +0.040")
    code, out, _ = run(capsys, "pack", "list", "--status", "rejected")
    assert code == 0 and out.count("inconclusive") == 1 and out.count("rejected") == 1
    code, out, _ = run(capsys, "pack", "list", "--json", "--status", "rejected")
    assert {(p["id"], p["status"], p["inconclusive"]) for p in json.loads(out)} == {
        (p3, "rejected", True), (p2, "rejected", False)}
    code, out, _ = run(capsys, "pack", "show", "arith@v4", "--json")
    doc = json.loads(out)
    assert {p["name"] for p in doc["parents"]} == {"arith@v2", "arith@v3"}
    assert [h["to"] for h in doc["history"]] == ["candidate", "promoted"]

    code, out, _ = run(capsys, "pack", "lineage", str(p4), "--json")
    graph = json.loads(out)
    assert {n["id"] for n in graph["nodes"]} == {f"pack:{i}" for i in (p1, p2, p3, p4)} | {"base:1"}
    assert len(graph["edges"]) == 5
    code, out, _ = run(capsys, "pack", "lineage", str(p4))
    assert code == 0 and "arith@v1" in out and "fused_from" in out and "(shown above)" in out
    code, out, _ = run(capsys, "pack", "lineage", "arith@v1", "--descendants", "--json")
    assert {n["id"] for n in json.loads(out)["nodes"]} == {f"pack:{i}" for i in (p1, p2, p3, p4)}

    code, out, _ = run(capsys, "job", "list", "--json")
    assert [j["id"] for j in json.loads(out)] == [job_id]
    code, out, _ = run(capsys, "job", "show", str(job_id), "--json")
    assert json.loads(out)["status"] == "queued"
    shown = run(capsys, "job", "show", str(job_id))[1]
    assert "learn" in shown and '{"skill"' not in shown  # the request as lines, not one JSON
    assert "skill: arith" in shown and "sft:" in shown and "  max_steps: 7" in shown


def test_unknown_ids_and_names(ready, capsys):
    _seed_packs()
    fails(capsys, "pack", "show", "999", match="No pack with id 999")
    fails(capsys, "pack", "show", "arith@v9", match="no pack version 9")
    fails(capsys, "pack", "lineage", "arihm@v1", match="Did you mean 'arith'")
    fails(capsys, "pack", "show", "not a ref", match="not a pack reference")
    fails(capsys, "pack", "list", "--status", "promotd", match="Did you mean 'promoted'")
    fails(capsys, "base", "show", "huge", match="No base named 'huge'")
    fails(capsys, "skill", "show", "42", match="No skill with id 42")
    fails(capsys, "job", "show", "77", match="No job with id 77")
    fails(capsys, "job", "show", "abc", match="not a job id")


def test_missing_files(ready, capsys, tmp_path):
    fails(capsys, "skill", "add", "x", "--data", str(tmp_path / "nope.jsonl"),
          match="does not exist")
    fails(capsys, "base", "add", "x", str(tmp_path / "nope"), match="does not exist")
    empty = tmp_path / "empty"
    empty.mkdir()
    fails(capsys, "base", "add", "x", str(empty), match="no config.json")


def test_uninitialised_workspace(workspace, capsys):
    for args in (["pack", "list"], ["base", "list", "--json"], ["gc"], ["job", "list"]):
        fails(capsys, *args, match="never initialised; run `skillstore init`")


def test_unreachable_database(workspace, capsys, monkeypatch):
    monkeypatch.setenv("SKILLSTORE_DATABASE_URL", "postgresql://postgres@127.0.0.1:1/nowhere")
    fails(capsys, "pack", "list", match="Cannot reach the catalog database")
    fails(capsys, "init", match="Cannot reach the catalog database")
    monkeypatch.setenv("SKILLSTORE_DATABASE_URL", "not a url")
    fails(capsys, "pack", "list", match="does not parse")


def test_schema_older_than_code(ready, capsys, monkeypatch):
    from skillstore.catalog import migrate
    monkeypatch.setattr(migrate, "head_revision", lambda: "9999")
    fails(capsys, "pack", "list",
          match="older than the code (9999); migrate it with `skillstore init`")


def test_schema_missing_in_existing_database(ready, capsys):
    from skillstore.catalog import migrate
    from skillstore.settings import get_settings
    migrate.downgrade(get_settings().database_url, "base")
    fails(capsys, "pack", "list", match="never initialised; run `skillstore init`")
    assert run(capsys, "init")[0] == 0
    assert run(capsys, "pack", "list", "--json")[0] == 0


@pytest.mark.postgres
def test_init_creates_and_migrates_a_postgres_catalog(workspace, capsys, monkeypatch):
    import uuid

    from factories import require_service

    from skillstore.catalog.db import drop_database

    require_service("postgres")
    url = f"postgresql://postgres@127.0.0.1:5432/skillstore_cli_{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("SKILLSTORE_DATABASE_URL", url)
    try:
        fails(capsys, "pack", "list",
              match="does not exist, so the workspace was never initialised")
        assert run(capsys, "init")[0] == 0
        assert run(capsys, "init")[0] == 0
        code, out, _ = run(capsys, "pack", "list", "--json")
        assert code == 0 and json.loads(out) == []
    finally:
        drop_database(url)


def test_database_file_that_is_not_a_database(workspace, capsys):
    workspace.mkdir(parents=True)
    (workspace / "catalog.db").write_text("not sqlite")
    fails(capsys, "pack", "list", match="file is not a database")


def test_schema_newer_than_code(ready, capsys):
    import sqlalchemy as sa

    from skillstore.catalog.db import make_engine
    from skillstore.settings import get_settings
    engine = make_engine(get_settings().database_url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    fails(capsys, "pack", "list", match="newer than this skillstore")
    fails(capsys, "init", match="Can't locate revision")
