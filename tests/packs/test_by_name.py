"""`pack export|apply|download` on catalog packs (`12`, `sort@v1`) as well as pack files."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from skillstore.catalog import (
    add_skill,
    create_pack,
    init_workspace,
    register_base,
    set_pack_status,
)
from skillstore.intake import import_pack_file
from skillstore.packs import compress_checkpoint, read_pack
from skillstore.settings import Settings
from skillstore.zoo.register import register_checkpoint
from tests.conftest import run_cli as cli


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def world(llama_pair, compact_pack, tmp_path_factory):
    """A workspace whose catalog holds sort@v1 (the compact pack, promoted) and rev@v1 (another
    pack of the same base) on a registered copy of the base, so a base taken from the catalog
    differs in path from the one the pack files record; and packs whose blobs are gone, rotten,
    not a SkillPack, or whose base folder is not on this machine."""
    root = tmp_path_factory.mktemp("by_name")
    balanced = compress_checkpoint(*llama_pair, "balanced", root / "balanced.safetensors").path
    base = shutil.copytree(llama_pair[0], root / "registered-base")
    catalog = init_workspace(Settings(home=root / "ws"))
    with catalog.session() as s:
        register_checkpoint(s, "tiny", base)
        skills = {n: add_skill(s, name=n, suite=n) for n in ("sort", "rev", "gone", "rot", "junk",
                                                              "moved")}
        sort = import_pack_file(s, catalog.blobs, compact_pack, skill="sort", base="tiny")
        set_pack_status(s, sort, "promoted", reason="test", actor="test")
        rev = import_pack_file(s, catalog.blobs, balanced, skill="rev", base="tiny")
        rot = _digest(b"the bytes that were stored")
        blob = Path(catalog.blobs.path(rot))
        blob.parent.mkdir(parents=True)
        blob.write_bytes(b"other bytes")
        elsewhere = register_base(s, name="moved", uri=str(root / "nowhere"),
                                  architecture="LlamaForCausalLM", fingerprint=_digest(b"moved"))
        for name, digest, on in (("gone", _digest(b"never stored"), sort.base),
                                 ("rot", rot, sort.base),
                                 ("junk", catalog.blobs.put_bytes(b"not a SkillPack"), sort.base),
                                 ("moved", sort.blob_digest, elsewhere)):
            create_pack(s, skill=skills[name], base=on, blob_digest=digest, size_bytes=1,
                        format_version=2, method="import")
        ids = {"sort": sort.id, "rev": rev.id}
        blob_of_sort = Path(catalog.blobs.path(sort.blob_digest))
    catalog.close()
    return {"home": root / "ws", "base": base, "compact": compact_pack, "balanced": balanced,
            "ids": ids, "sort_blob": blob_of_sort}


@pytest.fixture
def ws(world, monkeypatch, tmp_path):
    """The world's workspace as the CLI's, run from an empty folder."""
    for var in ("DATABASE_URL", "BLOB_URL", "BROKER_URL", "RESULT_BACKEND"):
        monkeypatch.delenv(f"SKILLSTORE_{var}", raising=False)
    monkeypatch.setenv("SKILLSTORE_HOME", str(world["home"]))
    monkeypatch.chdir(tmp_path)
    return world


def ok(capsys, *args: str) -> str:
    code, out, err = cli(capsys, *args)
    assert code == 0, (args, out, err)
    return out


def refused(capsys, *args: str) -> str:
    code, out, err = cli(capsys, *args)
    assert code == 1, (args, out, err)
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), (args, err)
    assert "Traceback" not in out + err
    return lines[0]


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


@pytest.mark.parametrize(("fmt", "by"), [("merged", "name"), ("peft", "id")])
def test_export_by_ref_is_the_export_of_the_file_on_the_catalogs_base(ws, capsys, tmp_path,
                                                                      fmt, by):
    ref = "sort@v1" if by == "name" else str(ws["ids"]["sort"])
    ok(capsys, "pack", "export", ref, "--format", fmt, "-o", str(tmp_path / "ref"))
    ok(capsys, "pack", "export", str(ws["compact"]), "--format", fmt, "--base", str(ws["base"]),
       "-o", str(tmp_path / "file"))
    got, want = tree(tmp_path / "ref"), tree(tmp_path / "file")
    assert got == want and len(got) >= 2


def test_a_pack_file_without_base_uses_the_registered_base_with_its_fingerprint(ws, capsys,
                                                                               tmp_path):
    """Packs name their base by fingerprint, not folder: without --base, a file is exported on
    the catalog's base that has that fingerprint."""
    assert "base" not in read_pack(ws["compact"]).manifest["created_from"]
    ok(capsys, "pack", "export", str(ws["compact"]), "--format", "merged",
       "-o", str(tmp_path / "auto"))
    ok(capsys, "pack", "export", str(ws["compact"]), "--format", "merged", "--base",
       str(ws["base"]), "-o", str(tmp_path / "given"))
    assert tree(tmp_path / "auto") == tree(tmp_path / "given")


def test_download_by_ref_writes_the_blob_byte_for_byte(ws, capsys, tmp_path):
    out = ok(capsys, "pack", "download", "sort@v1", "-o", str(tmp_path / "s.safetensors"))
    assert "wrote sort@v1" in out
    data = (tmp_path / "s.safetensors").read_bytes()
    assert data == ws["sort_blob"].read_bytes() == ws["compact"].read_bytes()
    folder = tmp_path / "dl"
    folder.mkdir()
    ok(capsys, "pack", "download", str(ws["ids"]["rev"]), "-o", str(folder))
    assert (folder / "rev-v1.safetensors").read_bytes() == ws["balanced"].read_bytes()


def test_an_existing_file_wins_over_the_catalog(ws, capsys, tmp_path):
    shutil.copyfile(ws["balanced"], "sort@v1")  # in the working folder
    ok(capsys, "pack", "download", "sort@v1", "-o", str(tmp_path / "x.safetensors"))
    assert (tmp_path / "x.safetensors").read_bytes() == ws["balanced"].read_bytes()


def test_apply_takes_refs_with_scales_and_files(ws, capsys, tmp_path):
    ok(capsys, "pack", "apply", "sort@v1@0.5", f"{ws['ids']['rev']}@0.25", str(ws["compact"]),
       "-o", str(tmp_path / "ref"))
    ok(capsys, "pack", "apply", "--base", str(ws["base"]), f"{ws['compact']}@0.5",
       f"{ws['balanced']}@0.25", str(ws["compact"]), "-o", str(tmp_path / "file"))
    got = tree(tmp_path / "ref")
    assert got == tree(tmp_path / "file") and "skillstore_export.json" in got


MISSING = "neither an existing pack file nor a catalog pack reference"


@pytest.mark.parametrize(("args", "match"), [
    (["export", "sort@v9", "--format", "merged"],
     ["sort@v9", "no pack version 9", "`skillstore pack list --skill sort`"]),
    (["export", "sortt@v1", "--format", "peft"], ["sortt@v1", "Did you mean 'sort'"]),
    (["download", "999"], ["no pack with id 999", "`skillstore pack list`"]),
    (["apply", "sort@v1", "nope.safetensors@0.5"], ["'nope.safetensors@0.5' is " + MISSING]),
    (["export", "nope.safetensors", "--format", "merged"], ["'nope.safetensors' is " + MISSING]),
    (["apply", "sort@v1@half"], ["Scale 'half' in 'sort@v1@half' is not a number"]),
    (["download", "gone@v1"], ["Pack gone@v1: blob sha256:", "is missing from the blob store"]),
    (["export", "rot@v1", "--format", "merged"], ["Pack rot@v1: blob", "is corrupted"]),
    (["apply", "sort@v1", "junk@v1"], ["Pack junk@v1:", "is not a valid SkillPack"]),
    (["export", "moved@v1", "--format", "merged"],
     ["base of pack moved@v1, 'moved', is recorded at", "nowhere", "pass --base"]),
], ids=["unknown-version", "unknown-skill", "unknown-id", "apply-neither", "export-neither",
        "bad-scale", "blob-missing", "blob-corrupt", "blob-not-a-pack", "base-not-here"])
def test_bad_input_is_one_line_naming_it(ws, capsys, tmp_path, args, match):
    out = tmp_path / "out"
    line = refused(capsys, "pack", *args, "-o", str(out))
    assert all(m in line for m in match), line
    assert not out.exists()


def test_a_ref_without_a_catalog_says_to_init(workspace, world, capsys, tmp_path):
    for args in (["download", "sort@v1"], ["export", "sort@v1", "--format", "peft"],
                 ["apply", str(world["compact"]), "sort@v1@0.5"]):
        line = refused(capsys, "pack", *args, "-o", str(tmp_path / "out"))
        assert "'sort@v1' is not a file" in line and "run `skillstore init`" in line, line
    # A file needs no catalog.
    ok(capsys, "pack", "download", str(world["compact"]), "-o", str(tmp_path / "c.safetensors"))
    assert (tmp_path / "c.safetensors").read_bytes() == world["compact"].read_bytes()
