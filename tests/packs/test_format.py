"""The pack file: manifest contents, lossless round trip, and every corruption refused."""

import base64
import json
import shutil
import zlib

import pytest
import torch
from safetensors.torch import save_file

from skillstore import __version__
from skillstore.errors import CorruptPackError, ModelMismatchError
from skillstore.fingerprint import fingerprint_checkpoint, iter_checkpoint_tensors
from skillstore.packs import DensePart, LowRankPart, SparsePart, compress_checkpoint, read_pack
from skillstore.packs.format import MANIFEST_KEY

from .conftest import tiny_gpt2, tiny_llama


def true_deltas(pair):
    base = dict(iter_checkpoint_tensors(pair[0]))
    return {n: t.float() - base[n].float() for n, t in iter_checkpoint_tensors(pair[1])}


def test_manifest_says_what_the_pack_is(compact_pack, llama_pair):
    pack = read_pack(compact_pack)
    m = pack.manifest
    assert m["format"] == "skillstore.pack" and m["format_version"] == 2
    assert m["producer_version"] == __version__
    assert pack.base_fingerprint == fingerprint_checkpoint(llama_pair[0])
    entry = m["tensors"]["model.layers.0.self_attn.q_proj.weight"]
    assert entry["codec"] == "mplr" and entry["role"] == "attention"
    assert entry["shape"] == [32, 32] and entry["dtype"] == "float32"
    assert m["tensors"]["model.norm.weight"]["codec"] == "dense"
    embedding = m["tensors"]["model.embed_tokens.weight"]  # the 10 rows the fine-tune moved
    assert embedding["codec"] == "magnitude" and embedding["info"] == {"layout": "rows",
                                                                        "count": 10}


def test_decoded_parts_and_dense_deltas_agree(llama_pair, tmp_path):
    pack = read_pack(compress_checkpoint(*llama_pair, "balanced", tmp_path / "b.safetensors").path)
    kinds = {type(p) for p in pack.decoded()}
    assert kinds == {LowRankPart, SparsePart, DensePart}
    for (name, dense), part in zip(pack.dense_deltas(), pack.decoded(), strict=True):
        assert name == part.name and torch.equal(dense, part.to_dense())


def test_lossless_within_fp16_rounding(llama_pair, tmp_path):
    summary = compress_checkpoint(*llama_pair, "lossless", tmp_path / "l.safetensors")
    truth = true_deltas(llama_pair)
    got = dict(read_pack(summary.path).dense_deltas())
    assert set(got) == {n for n, d in truth.items() if d.abs().max() > 0}
    for name, d in got.items():
        assert torch.allclose(d, truth[name], rtol=2**-11, atol=2**-25), name
    assert summary.rel_error < 1e-3
    assert summary.payload_bytes == summary.dense_fp16_bytes  # every tensor changed
    assert summary.bytes > summary.payload_bytes  # plus header and manifest


def test_presets_trade_bytes_for_error(llama_pair, tmp_path):
    done = {p: compress_checkpoint(*llama_pair, p, tmp_path / f"{p}.safetensors")
            for p in ("lossless", "balanced", "compact")}
    sizes = [done[p].payload_bytes for p in ("compact", "balanced", "lossless")]
    # attention and MLP: the presets differ only in rank and bits there (the embedding
    # operators differ in kind: on this pair's few changed rows balanced's pruning wins)
    errors = [sum(e for n, e in done[p].rel_errors.items() if "layers" in n and "norm" not in n)
              for p in ("compact", "balanced", "lossless")]
    assert sizes == sorted(sizes) and len(set(sizes)) == 3
    assert errors == sorted(errors, reverse=True)
    # 0.3, not less: compact's rank-32 head is full rank on this 32-wide model
    assert done["compact"].payload_bytes < 0.3 * done["compact"].dense_fp16_bytes
    assert done["compact"].codecs_by_role["attention"] == ["mplr"]
    assert max(e for n, e in done["balanced"].rel_errors.items() if "self_attn" in n) < 0.02


def test_budget_mode_fits_the_budget_and_spends_it_well(llama_pair, tmp_path):
    from skillstore.packs import load_policy

    # budgets under the point where compact's energy target stops the spending
    budgeted = compress_checkpoint(*llama_pair, load_policy("compact", budget=0.05),
                                   tmp_path / "b.safetensors")
    assert budgeted.payload_bytes <= 0.05 * budgeted.dense_fp16_bytes
    looser = compress_checkpoint(*llama_pair, load_policy("compact", budget=0.1),
                                 tmp_path / "c.safetensors")
    assert looser.rel_error < budgeted.rel_error


def test_gpt2_fused_c_attn_is_an_attention_role(gpt2_pair, tmp_path):
    summary = compress_checkpoint(*gpt2_pair, "balanced", tmp_path / "g.safetensors")
    m = read_pack(summary.path).manifest["tensors"]
    assert m["transformer.h.0.attn.c_attn.weight"]["role"] == "attention"
    assert m["transformer.h.0.mlp.c_fc.weight"]["role"] == "mlp"
    assert m["transformer.wte.weight"]["role"] == "embedding"
    assert m["transformer.h.0.attn.c_attn.bias"]["role"] == "small"


def test_truncated_file_refused(compact_pack, tmp_path):
    data = compact_pack.read_bytes()
    bad = tmp_path / "t.safetensors"
    for cut in (len(data) - 1, len(data) // 2, 20, 4):
        bad.write_bytes(data[:cut])
        with pytest.raises(CorruptPackError, match="not a valid SkillPack"):
            read_pack(bad)


def test_bit_flip_refused_in_payload_and_in_header(compact_pack, tmp_path):
    data = bytearray(compact_pack.read_bytes())
    header_len = int.from_bytes(data[:8], "little")
    for pos in (len(data) - 3, 8 + header_len + 5, 8 + header_len // 2):
        flipped = bytearray(data)
        flipped[pos] ^= 0x04
        bad = tmp_path / f"f{pos}.safetensors"
        bad.write_bytes(bytes(flipped))
        with pytest.raises(CorruptPackError):
            read_pack(bad)


@pytest.mark.parametrize("whole", [True, False])
def test_small_packs_read_whole_and_large_ones_mapped_give_the_same_pack(
        compact_pack, tmp_path, monkeypatch, whole):
    from skillstore.packs import format as pack_format

    expected = read_pack(compact_pack)
    monkeypatch.setattr(pack_format, "READ_WHOLE_BYTES", 1 << 40 if whole else 0)
    pack = read_pack(compact_pack)
    assert pack.manifest == expected.manifest and pack.tensors.keys() == expected.tensors.keys()
    assert all(torch.equal(pack.tensors[k], expected.tensors[k]) for k in pack.tensors)
    data = bytearray(compact_pack.read_bytes())
    data[-3] ^= 0x04
    bad = tmp_path / "flipped.safetensors"
    bad.write_bytes(bytes(data))
    with pytest.raises(CorruptPackError, match="digest"):
        read_pack(bad)


def _as_version_1(pack, path):
    """Rewrite a pack as format version 1 did: a tensor per payload key, the manifest plain JSON."""
    from skillstore.packs.format import payload_digest

    manifest = {**pack.manifest, "format_version": 1}
    manifest["payload_digest"] = payload_digest(manifest, pack.tensors)
    save_file({k: t.contiguous() for k, t in pack.tensors.items()}, str(path),
              metadata={MANIFEST_KEY: json.dumps(manifest, sort_keys=True)})
    return path


def test_version_1_packs_are_still_read(compact_pack, tmp_path):
    pack = read_pack(compact_pack)
    old = read_pack(_as_version_1(pack, tmp_path / "v1.safetensors"))
    assert old.manifest["format_version"] == 1
    stamps = ("format_version", "payload_digest")
    assert {k: v for k, v in old.manifest.items() if k not in stamps} == \
        {k: v for k, v in pack.manifest.items() if k not in stamps}
    for (name, new_d), (old_name, old_d) in zip(pack.dense_deltas(), old.dense_deltas(),
                                                strict=True):
        assert name == old_name and torch.equal(new_d, old_d)


def test_version_2_folds_the_payload_and_packs_the_manifest(compact_pack, tmp_path):
    from safetensors import safe_open

    pack = read_pack(compact_pack)
    with safe_open(str(compact_pack), framework="pt") as f:
        keys = sorted(f.keys())
        plain = json.loads(f.metadata()[MANIFEST_KEY])
    assert all(k.startswith("payload.") for k in keys) and len(keys) < len(pack.tensors)
    # what a reader without skillstore sees: what the pack is, against which base, its digest
    assert plain["base_fingerprint"] == pack.base_fingerprint and "tensors" not in plain
    v1 = _as_version_1(pack, tmp_path / "v1.safetensors")
    payload = sum(t.numel() * t.element_size() for t in pack.tensors.values())
    header_v1 = v1.stat().st_size - payload
    header_v2 = compact_pack.stat().st_size - payload
    assert header_v2 * 3 < header_v1, (header_v1, header_v2)


def test_damaged_packed_manifest_refused(compact_pack, tmp_path):
    from safetensors import safe_open

    with safe_open(str(compact_pack), framework="pt") as f:
        plain = json.loads(f.metadata()[MANIFEST_KEY])
        flat = {k: f.get_tensor(k) for k in f.keys()}
    outside = {"tensors": {}, "layout": {"x::codes": ["uint8", 10**9, [4]]}}
    cases = {"not base64": "@@" + plain["packed"][2:],
             "not zlib": base64.b64encode(b"plain bytes").decode(),
             "outside": base64.b64encode(zlib.compress(json.dumps(outside).encode())).decode()}
    for why, packed in cases.items():
        bad = tmp_path / f"{why.replace(' ', '_')}.safetensors"
        save_file(flat, str(bad), metadata={MANIFEST_KEY: json.dumps({**plain, "packed": packed})})
        with pytest.raises(CorruptPackError, match="packed manifest cannot be read"):
            read_pack(bad)


def test_foreign_safetensors_refused(tmp_path):
    foreign = tmp_path / "model.safetensors"
    save_file({"w": torch.zeros(3)}, str(foreign), metadata={"format": "pt"})
    with pytest.raises(CorruptPackError, match="without a SkillPack manifest"):
        read_pack(foreign)
    not_st = tmp_path / "junk.safetensors"
    not_st.write_bytes(b"hello world, not a pack at all")
    with pytest.raises(CorruptPackError):
        read_pack(not_st)


def test_edited_manifest_refused(compact_pack, tmp_path):
    from safetensors import safe_open

    with safe_open(str(compact_pack), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    manifest = json.loads(meta[MANIFEST_KEY])
    manifest["base_fingerprint"] = "sha256:" + "0" * 64
    bad = tmp_path / "edited.safetensors"
    save_file(tensors, str(bad), metadata={MANIFEST_KEY: json.dumps(manifest)})
    with pytest.raises(CorruptPackError, match="digest"):
        read_pack(bad)


def test_mismatched_checkpoints_name_the_first_mismatch(llama_pair, gpt2_pair, tmp_path):
    with pytest.raises(ModelMismatchError, match="Architectures differ"):
        compress_checkpoint(llama_pair[0], gpt2_pair[1], "compact", tmp_path / "x.safetensors")
    # same architecture, different shapes: the first differing tensor (in name order)
    other = tiny_llama()
    other.config.intermediate_size = 64
    bigger = tmp_path / "wide"
    from transformers import LlamaForCausalLM

    cfg = tiny_llama().config
    cfg.vocab_size = 100
    LlamaForCausalLM(cfg).save_pretrained(str(bigger))
    with pytest.raises(ModelMismatchError, match="'lm_head.weight' has shape \\[96, 32\\]"):
        compress_checkpoint(llama_pair[0], bigger, "compact", tmp_path / "y.safetensors")
    # a tensor missing from the tuned side
    missing = tmp_path / "missing"
    shutil.copytree(llama_pair[1], missing)
    tensors = dict(iter_checkpoint_tensors(missing))
    del tensors["model.norm.weight"]
    save_file(tensors, str(missing / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ModelMismatchError, match="'model.norm.weight' is in base"):
        compress_checkpoint(llama_pair[0], missing, "compact", tmp_path / "z.safetensors")
    assert not (tmp_path / "z.safetensors").exists()
    assert tiny_gpt2  # the GPT-2 builder is used by the gpt2_pair fixture


def test_a_diverged_checkpoint_is_refused_by_name(llama_pair, tmp_path):
    """NaN deltas once surfaced as 'values do not fit in 8 bits' from the bit-packer."""
    from safetensors.torch import load_file

    from skillstore.packs import load_policy

    broken = tmp_path / "broken"
    shutil.copytree(llama_pair[1], broken)
    weights = load_file(str(broken / "model.safetensors"))
    weights["model.layers.1.mlp.up_proj.weight"][0, :3] = float("nan")
    save_file(weights, str(broken / "model.safetensors"), metadata={"format": "pt"})
    for policy in ("compact", load_policy("compact", budget=0.05)):
        with pytest.raises(ModelMismatchError, match=r"up_proj.weight.*3 NaN or infinite.*retrain"):
            compress_checkpoint(llama_pair[0], broken, policy, tmp_path / "x.safetensors")


def test_budget_counts_the_whole_file(llama_pair, tmp_path):
    from skillstore.packs import load_policy

    done = compress_checkpoint(*llama_pair, load_policy("compact", budget=0.4),
                               tmp_path / "b.safetensors")
    assert done.bytes <= 0.4 * done.dense_fp16_bytes  # header and manifest included
    assert done.bytes > done.payload_bytes
