"""Baselines: LoRA gives back a plain merged model; sequential FT fills its accuracy matrix."""

from __future__ import annotations

import dataclasses

import torch

from skillstore.curriculum.validate import load_rows
from skillstore.fingerprint import fingerprint_module
from skillstore.models import load_causal_lm
from skillstore.training.baselines import (
    LoRAConfig,
    Stage,
    fit_stage,
    sweep_lora,
    train_joint,
    train_lora,
    train_sequential,
)
from skillstore.training.dpo import DPOConfig
from skillstore.training.sft import SFTConfig

TINY = SFTConfig(lr=1e-2, max_steps=6, batch_size=8, eval_every=3)


def _stages(mini_zoo, names):
    cur = mini_zoo.load_curriculum()
    return [Stage(n, load_rows(cur.skills[n].train), load_rows(cur.skills[n].validation),
                  load_rows(cur.skills[n].test)[:4]) for n in names]


def test_lora_merges_into_a_plain_model_of_the_base_architecture(mini_zoo):
    model, tok = load_causal_lm(mini_zoo.target, fingerprint=False)
    base_names = set(model.state_dict())
    before = fingerprint_module(model)
    stage = _stages(mini_zoo, ["knowledge"])[0]
    result = train_lora(model, tok, stage.train, stage.validation, LoRAConfig(rank=4, sft=TINY))
    merged = result.model
    assert type(merged).__name__ == "LlamaForCausalLM"
    assert set(merged.state_dict()) == base_names
    assert fingerprint_module(merged) != before
    assert result.metrics["rank"] == 4
    n_base = sum(p.numel() for p in merged.parameters())
    assert 0 < result.metrics["trainable_params"] < n_base / 4


def test_sequential_matrix_has_a_row_per_stage_and_joint_trains_all(mini_zoo):
    stages = _stages(mini_zoo, ["knowledge", "add"])
    model, tok = load_causal_lm(mini_zoo.target, fingerprint=False)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    result, matrix = train_sequential(model, tok, stages, TINY)
    assert len(matrix) == 2 and all(len(row) == 2 for row in matrix)
    assert all(0.0 <= v <= 1.0 for row in matrix for v in row)
    assert result.metrics["stages"] == ["knowledge", "add"]
    assert any(not torch.equal(start[k], v) for k, v in model.state_dict().items())
    model, tok = load_causal_lm(mini_zoo.target, fingerprint=False)
    joint = train_joint(model, tok, stages, TINY)
    assert joint.metrics["n_train"] == sum(len(s.train) for s in stages)


def test_a_lora_sweep_tries_every_point_keeps_the_best_and_leaves_the_model(mini_zoo):
    model, tok = load_causal_lm(mini_zoo.target, fingerprint=False)
    before = fingerprint_module(model)
    stage = _stages(mini_zoo, ["knowledge"])[0]
    sweep = sweep_lora(model, tok, stage.train, stage.validation[:16], ranks=[2, 4],
                       lrs=[1e-4, 3e-2], sft=TINY)
    assert [(p["rank"], p["lr"]) for p in sweep.points] == [(2, 1e-4), (2, 3e-2), (4, 1e-4),
                                                            (4, 3e-2)]
    assert all(p["n"] == 16 and p["best_val_loss"] is not None for p in sweep.points)
    best = max(sweep.points, key=lambda p: (p["val_exact_match"], -p["best_val_loss"], -p["rank"]))
    assert (sweep.rank, sweep.lr) == (best["rank"], best["lr"])
    # 6 steps at 1e-4 barely move the adapter: the larger rate reaches a lower validation loss
    losses = {(p["rank"], p["lr"]): p["best_val_loss"] for p in sweep.points}
    assert losses[(4, 3e-2)] < losses[(4, 1e-4)]
    assert fingerprint_module(model) == before  # every point trained a copy
    assert sweep.as_json()["points"] == sweep.points


def test_a_dpo_stage_is_the_same_sft_then_dpo_against_the_sft_model(mini_zoo):
    """fit_stage seeds SFT, so a stage with DPO and one without part only at DPO: each training
    prompt gets a pair (the model's refused greedy answer, else the documented fallback)."""
    stage = _stages(mini_zoo, ["knowledge"])[0]
    sft_only, tok = load_causal_lm(mini_zoo.target, fingerprint=False)
    plain = fit_stage(sft_only, tok, stage, TINY)
    assert "dpo" not in plain.metrics
    model, _ = load_causal_lm(mini_zoo.target, fingerprint=False)
    dpo = DPOConfig(max_steps=2, batch_size=4, samples=0, synthetic_rejected=True, seed=5)
    fit = fit_stage(model, tok, dataclasses.replace(stage, dpo=dpo), TINY)
    assert fit.metrics["best_val_loss"] == plain.metrics["best_val_loss"]  # the same SFT
    assert (fit.metrics["dpo"]["steps"], fit.metrics["dpo"]["seed"]) == (2, 5)
    origins = fit.metrics["dpo"]["pairs"]["knowledge"]
    assert origins["dropped"] == 0 and origins["source"] == 0
    assert origins["greedy"] + origins["synthetic"] == len(stage.train)
    assert fingerprint_module(model) != fingerprint_module(sft_only)
