"""The `skillstore pack` commands end to end on a tiny pair."""

import json

import torch
from typer.testing import CliRunner

from skillstore.cli import app
from skillstore.errors import ConfigError
from skillstore.packs import apply_pack, read_pack
from skillstore.packs.export import load_base

from .conftest import logits

runner = CliRunner()


def test_compress_inspect_apply_export(llama_pair, tmp_path):
    base, tuned = llama_pair
    pack = tmp_path / "p.safetensors"
    res = runner.invoke(app, ["pack", "compress", "--base", str(base), "--tuned", str(tuned),
                              "--policy", "compact", "-o", str(pack)])
    assert res.exit_code == 0, res.output
    assert "of the dense fp16 delta" in res.output and pack.is_file()

    res = runner.invoke(app, ["pack", "inspect", str(pack)])
    assert res.exit_code == 0, res.output
    assert "model.layers.0.self_attn.q_proj.weight" in res.output and "mplr" in res.output
    res = runner.invoke(app, ["pack", "inspect", str(pack), "--json"])
    assert json.loads(res.output)["base_fingerprint"] == read_pack(pack).base_fingerprint

    merged = tmp_path / "merged"
    res = runner.invoke(app, ["pack", "apply", "--base", str(base), f"{pack}@0.5",
                              "-o", str(merged)])
    assert res.exit_code == 0, res.output
    from transformers import AutoModelForCausalLM

    expected = load_base(base)
    apply_pack(expected, pack, 0.5)
    assert torch.equal(logits(AutoModelForCausalLM.from_pretrained(str(merged))), logits(expected))

    adapter = tmp_path / "adapter"
    res = runner.invoke(app, ["pack", "export", str(pack), "--format", "peft", "-o", str(adapter)])
    # the pack names its base by fingerprint only, and no catalog here has registered it
    assert isinstance(res.exception, ConfigError) and "pass --base" in str(res.exception)
    res = runner.invoke(app, ["pack", "export", str(pack), "--format", "peft", "--base", str(base),
                              "-o", str(adapter)])
    assert res.exit_code == 0, res.output
    assert (adapter / "adapter_config.json").is_file()


def test_budget_option_is_a_percent(llama_pair, tmp_path):
    pack = tmp_path / "b.safetensors"
    res = runner.invoke(app, ["pack", "compress", "--base", str(llama_pair[0]), "--tuned",
                              str(llama_pair[1]), "--budget", "20", "-o", str(pack)])
    assert res.exit_code == 0, res.output
    assert read_pack(pack).manifest["policy"]["budget"] == 0.2


def test_workers_option_gives_the_same_file(llama_pair, tmp_path):
    from skillstore.fingerprint import sha256_file

    digests = []
    for workers in ("1", "3"):
        pack = tmp_path / f"w{workers}.safetensors"
        res = runner.invoke(app, ["pack", "compress", "--base", str(llama_pair[0]), "--tuned",
                                  str(llama_pair[1]), "--budget", "20", "--workers", workers,
                                  "-o", str(pack)])
        assert res.exit_code == 0, res.output
        digests.append(sha256_file(pack))
    assert digests[0] == digests[1]
    res = runner.invoke(app, ["pack", "compress", "--base", str(llama_pair[0]), "--tuned",
                              str(llama_pair[1]), "--workers", "0", "-o", str(tmp_path / "z")])
    assert res.exit_code == 2 and "--workers" in res.output


def test_bad_inputs_are_one_line_errors(llama_pair, compact_pack, tmp_path):
    res = runner.invoke(app, ["pack", "compress", "--base", str(llama_pair[0]), "--tuned",
                              str(llama_pair[1]), "--policy", "compactt",
                              "-o", str(tmp_path / "x")])
    assert isinstance(res.exception, ConfigError)
    assert "Did you mean 'compact'" in str(res.exception)
    res = runner.invoke(app, ["pack", "export", str(compact_pack), "--format", "gguf", "-o",
                              str(tmp_path / "y")])
    assert isinstance(res.exception, ConfigError) and "merged, peft" in str(res.exception)
