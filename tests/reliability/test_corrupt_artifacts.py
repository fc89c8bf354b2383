"""Damaged and foreign pack files through every entry point: one-line refusal, nothing changed.

tests/packs covers the format checks in `read_pack`; this covers what each user-facing entry
point (the CLI commands, the library apply/export, the pack import behind the API upload) does
with such a file: exit 1 with one `error:` line, and the workspace, the output folder and the
base model all left exactly as they were.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import sqlalchemy as sa
import torch

from skillstore.catalog import init_workspace
from skillstore.errors import SkillstoreError
from skillstore.packs import apply_pack, compress_checkpoint, export_merged, export_peft
from skillstore.packs.export import load_base
from skillstore.settings import Settings
from skillstore.zoo.register import register_checkpoint
from tests.conftest import run_cli as cli
from tests.packs.conftest import save_pair, tiny_llama

from .faults import tree_files

CORRUPT = ("truncated", "bitflip-payload", "bitflip-header", "foreign-safetensors",
           "not-safetensors")
BAD = (*CORRUPT, "other-base")


def _flip(data: bytes, pos: int) -> bytes:
    out = bytearray(data)
    out[pos] ^= 0x10
    return bytes(out)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """A base, a good pack for it, a valid pack made for another base, and damaged copies."""
    root = tmp_path_factory.mktemp("artifacts")
    base, tuned = save_pair(root / "mine", tiny_llama)
    other_base, other_tuned = save_pair(root / "other", lambda seed: tiny_llama(seed + 7))
    good = root / "good.safetensors"
    compress_checkpoint(base, tuned, "compact", good)
    files = {"other-base": root / "other-base.safetensors"}
    compress_checkpoint(other_base, other_tuned, "compact", files["other-base"])
    data = good.read_bytes()
    header_len = int.from_bytes(data[:8], "little")
    variants = {"truncated": data[: len(data) // 2],
                "bitflip-payload": _flip(data, len(data) - 3),
                "bitflip-header": _flip(data, 8 + header_len // 2),
                "foreign-safetensors": (base / "model.safetensors").read_bytes(),
                "not-safetensors": b"PK\x03\x04 a zip file, not a SkillPack"}
    for kind, content in variants.items():
        files[kind] = root / f"{kind}.safetensors"
        files[kind].write_bytes(content)
    return {"base": base, "good": good, **files}


@pytest.fixture
def workspace_state(tmp_path, monkeypatch, artifacts):
    """An initialised workspace (the CLI's), and a snapshot function of everything it holds."""
    settings = Settings(home=tmp_path / "ws")
    for var in ("DATABASE_URL", "BLOB_URL", "BROKER_URL", "RESULT_BACKEND"):
        monkeypatch.delenv(f"SKILLSTORE_{var}", raising=False)
    monkeypatch.setenv("SKILLSTORE_HOME", str(settings.home))
    catalog = init_workspace(settings)
    with catalog.session() as s:
        register_checkpoint(s, "mine", artifacts["base"])
        from skillstore.catalog import add_skill

        add_skill(s, name="arith", suite="arith")

    def snapshot() -> dict:
        with catalog.engine.connect() as conn:
            rows = {t: conn.scalar(sa.text(f'SELECT count(*) FROM "{t}"'))
                    for t in sa.inspect(conn).get_table_names()}
        return {"rows": rows, "blobs": tree_files(settings.home / "blobs"),
                "base": {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
                         for p in artifacts["base"].iterdir()}}

    yield catalog, snapshot
    catalog.close()


def refused(capsys, *args: str) -> str:
    code, out, err = cli(capsys, *args)
    assert code == 1, (args, out, err)
    # Loading a base model draws a progress bar on stderr; the error is still one line, the last.
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), (args, err)
    assert sum(line.startswith("error") for line in lines) == 1, (args, err)
    assert "Traceback" not in out + err
    return lines[-1]


def _commands(kind: str, path: Path, base: Path, out: Path) -> list[list[str]]:
    cmds = [["pack", "apply", "--base", str(base), str(path), "-o", str(out)],
            ["pack", "export", str(path), "--format", "merged", "--base", str(base),
             "-o", str(out)],
            ["pack", "export", str(path), "--format", "peft", "--base", str(base),
             "-o", str(out)]]
    if kind != "other-base":  # a valid pack of another base is fine to inspect
        cmds.insert(0, ["pack", "inspect", str(path)])
    return cmds


@pytest.mark.parametrize("kind", BAD)
def test_cli_refuses_bad_pack_and_changes_nothing(kind, artifacts, workspace_state, tmp_path,
                                                  capsys, figures):
    _, snapshot = workspace_state
    before = snapshot()
    out = tmp_path / "out"
    errors = []
    for args in _commands(kind, artifacts[kind], artifacts["base"], out):
        errors.append(refused(capsys, *args))
        assert not out.exists() or not any(out.iterdir()), f"{args} wrote {tree_files(out)}"
    expect = "was made for base" if kind == "other-base" else "is not a valid SkillPack"
    assert all(expect in e for e in errors), errors
    assert snapshot() == before
    figures.update(kind=kind, entry_points=len(errors), refused=len(errors))


def test_cli_still_works_on_the_good_pack(artifacts, workspace_state, tmp_path, capsys):
    """The control: the same commands accept the undamaged pack (so the refusals are real)."""
    for i in range(4):
        args = _commands("good", artifacts["good"], artifacts["base"], tmp_path / f"ok{i}")[i]
        code, out, err = cli(capsys, *args)
        assert code == 0, (args, out, err)


@pytest.mark.parametrize("kind", BAD)
def test_library_apply_and_export_refuse_without_side_effects(kind, artifacts, tmp_path):
    model = load_base(artifacts["base"])
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(SkillstoreError):
        apply_pack(model, artifacts[kind])
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    for export in (lambda out: export_merged(artifacts["base"], [(artifacts[kind], 1.0)], out),
                   lambda out: export_peft(artifacts[kind], artifacts["base"], out)):
        out = tmp_path / "export"
        with pytest.raises(SkillstoreError):
            export(out)
        assert not out.exists()


@pytest.mark.parametrize("kind", BAD)
def test_pack_import_refuses_without_storing(kind, artifacts, workspace_state):
    """The library import behind the HTTP upload: no blob, no row, for any bad file."""
    from skillstore.intake import import_pack_file

    catalog, snapshot = workspace_state
    before = snapshot()
    with pytest.raises(SkillstoreError):
        with catalog.session() as s:
            import_pack_file(s, catalog.blobs, artifacts[kind], skill="arith", base="mine")
    assert snapshot() == before
