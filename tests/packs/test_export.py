"""Export: the merged folder equals the grafted model; the PEFT adapter gives its logits."""

import json

import pytest
import torch

from skillstore.errors import ConfigError, FingerprintMismatchError
from skillstore.packs import apply_pack, compress_checkpoint, export_merged, export_peft, read_pack
from skillstore.packs.export import load_base

from .conftest import finetune_like, logits, tiny_llama


def test_merged_export_equals_grafted(llama_pair, compact_pack, tmp_path):
    from transformers import AutoModelForCausalLM

    out = export_merged(llama_pair[0], [(compact_pack, 0.8)], tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(str(out))
    grafted = load_base(llama_pair[0])
    apply_pack(grafted, compact_pack, 0.8)
    for name, t in grafted.state_dict().items():
        assert torch.equal(merged.state_dict()[name], t), name
    assert torch.equal(logits(merged), logits(grafted))
    prov = json.loads((out / "skillstore_export.json").read_text())
    assert prov["packs"] == [{"digest": read_pack(compact_pack).digest, "scale": 0.8}]


def test_merged_export_refuses_foreign_pack(llama_pair, compact_pack, tmp_path):
    other = tmp_path / "other_base"
    tiny_llama(seed=9).save_pretrained(str(other))
    with pytest.raises(FingerprintMismatchError):
        export_merged(other, [(compact_pack, 1.0)], tmp_path / "m")
    assert not (tmp_path / "m").exists()


def _peft_logits(base_dir, adapter_dir):
    from peft import PeftModel

    model = PeftModel.from_pretrained(load_base(base_dir, dtype=torch.float32), str(adapter_dir))
    return logits(model.eval())


def test_peft_export_logits_match_grafted(llama_pair, compact_pack, tmp_path):
    out = export_peft(compact_pack, llama_pair[0], tmp_path / "adapter")
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert (out / "adapter_model.safetensors").is_file()
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 4  # the fine-tune's rank, every matrix
    grafted = load_base(llama_pair[0])
    apply_pack(grafted, compact_pack)
    expected = logits(grafted)
    got = _peft_logits(llama_pair[0], out)
    base = logits(load_base(llama_pair[0]))
    assert (expected - base).abs().max() > 1e-2  # the pack does change the outputs
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4)


def test_peft_export_gpt2_fused_conv1d(gpt2_pair, tmp_path):
    pack = compress_checkpoint(*gpt2_pair, "balanced", tmp_path / "g.safetensors").path
    out = export_peft(pack, gpt2_pair[0], tmp_path / "adapter")
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["fan_in_fan_out"] and cfg["bias"] == "lora_only"
    grafted = load_base(gpt2_pair[0])
    apply_pack(grafted, pack)
    assert torch.allclose(_peft_logits(gpt2_pair[0], out), logits(grafted), atol=1e-4, rtol=1e-4)


def test_peft_export_needs_low_rank_parts(llama_pair, tmp_path):
    pack = compress_checkpoint(*llama_pair, "lossless", tmp_path / "l.safetensors").path
    with pytest.raises(ConfigError, match="--format merged"):
        export_peft(pack, llama_pair[0], tmp_path / "adapter")
    assert finetune_like  # shared builder, used by the fixtures
