"""Module roles from names and shapes; policies, presets and their validation."""

import json

import pytest
from pydantic import ValidationError

from skillstore.errors import ConfigError
from skillstore.packs import PRESETS, CodecSpec, CompressionPolicy, load_policy, module_role
from skillstore.packs.roles import ATTENTION, EMBEDDING, MLP, SMALL, UNKNOWN


@pytest.mark.parametrize("name,shape,role", [
    ("model.embed_tokens.weight", (100, 8), EMBEDDING),
    ("lm_head.weight", (100, 8), EMBEDDING),
    ("model.layers.3.self_attn.q_proj.weight", (8, 8), ATTENTION),
    ("model.layers.3.self_attn.o_proj.weight", (8, 8), ATTENTION),
    ("model.layers.3.self_attn.k_proj.bias", (8,), SMALL),           # Qwen2 biases
    ("model.layers.3.mlp.gate_proj.weight", (16, 8), MLP),
    ("model.layers.3.mlp.down_proj.weight", (8, 16), MLP),
    ("model.layers.3.post_feedforward_layernorm.weight", (8,), SMALL),  # Gemma 2
    ("model.norm.weight", (8,), SMALL),
    ("transformer.wte.weight", (100, 8), EMBEDDING),
    ("transformer.wpe.weight", (64, 8), EMBEDDING),
    ("transformer.h.0.attn.c_attn.weight", (8, 24), ATTENTION),      # fused q, k, v
    ("transformer.h.0.attn.c_proj.weight", (8, 8), ATTENTION),
    ("transformer.h.0.mlp.c_fc.weight", (8, 32), MLP),
    ("transformer.h.0.mlp.c_proj.weight", (32, 8), MLP),
    ("transformer.h.0.ln_1.weight", (8,), SMALL),
])
def test_roles_of_common_architectures(name, shape, role):
    assert module_role(name, shape) == role


def test_unknown_2d_tensor_warns_and_falls_back_to_dense():
    with pytest.warns(UserWarning, match="no module role"):
        assert module_role("encoder.blocks.0.mixer.in_weight", (8, 8)) == UNKNOWN
    assert PRESETS["compact"].spec_for(UNKNOWN).codec == "dense"


def test_role_table_covers_an_unknown_architecture():
    table = ((r"mixer\.in_weight$", "attention"),)
    assert module_role("encoder.blocks.0.mixer.in_weight", (8, 8), table) == ATTENTION
    with pytest.raises(ValidationError, match="Unknown module role 'atention'"):
        CompressionPolicy(role_table=((r"x", "atention"),))


def test_presets_and_their_operators():
    assert set(PRESETS) == {"lossless", "balanced", "compact"}
    assert all(PRESETS["lossless"].spec_for(r).codec == "dense"
               for r in (EMBEDDING, ATTENTION, MLP))
    assert PRESETS["lossless"].budget is None
    # the lossy presets are relative: a share of the dense delta and an energy to keep
    compact, balanced = PRESETS["compact"], PRESETS["balanced"]
    assert compact.budget == 0.05 and balanced.budget > compact.budget
    assert all(balanced.energy[r] > compact.energy[r] for r in (EMBEDDING, ATTENTION, MLP))
    with pytest.raises(ValidationError):
        compact.budget = 0.1  # frozen
    with pytest.raises(ValidationError, match="set budget too"):
        CompressionPolicy(energy={"mlp": 0.9})
    with pytest.raises(ValidationError, match="Unknown role with an energy target 'smal'"):
        CompressionPolicy(budget=0.1, energy={"smal": 0.9})


def test_unknown_preset_and_bad_policy_file(tmp_path):
    with pytest.raises(ConfigError, match="Did you mean 'balanced'"):
        load_policy("balancd")
    bad = tmp_path / "policy.json"
    bad.write_text(json.dumps({"attention": {"codec": "svd"}}))
    with pytest.raises(ConfigError,
                       match="Valid names: bitdelta, dare, dense, lowrank, magnitude, mplr"):
        load_policy(bad)
    bad.write_text(json.dumps({"budget": 3}))
    with pytest.raises(ConfigError, match="budget"):
        load_policy(bad)
    with pytest.raises(ConfigError, match="fraction"):
        load_policy("compact", budget=5)


def test_policy_file_round_trips(tmp_path):
    policy = CompressionPolicy(name="mine",
                               attention=CodecSpec(codec="lowrank", params={"rank": 4}))
    path = tmp_path / "mine.json"
    path.write_text(policy.model_dump_json())
    assert load_policy(path) == policy
    assert load_policy(path, budget=0.05).budget == 0.05
