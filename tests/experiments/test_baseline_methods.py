"""The fair baselines as experiment runs: LoRA in sequence and per skill (swept, the choice
recorded and reused across seeds), and merges of per-skill fine-tunes checked by hand on toy
deltas; one multi_lora experiment end to end on a real worker."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from torch import nn

from skillstore.experiments import parse_spec
from skillstore.experiments.baselines import (
    dare,
    earlier_sweep,
    lora_parts,
    merge_fusions,
    merge_method,
    merge_scores,
    merged,
    pick_scale,
    weights_of,
)
from skillstore.experiments.catalog import RunCancelled, create_experiment
from skillstore.experiments.methods import check_runnable, execute
from skillstore.experiments.spec import Merge
from skillstore.models import load_causal_lm
from skillstore.packs.parts import LowRankPart
from skillstore.training.baselines import LoRAConfig, Stage, lora_model
from skillstore.training.generate import ExactMatch
from skillstore.training.sft import SFTConfig, train_sft

from .conftest import spec_doc
from .test_methods import QUICK, ROWS, inputs
from .test_methods import ll_suites as suites  # noqa: F401 - a fixture

NAMES = list(ROWS)


def lora_size(base_dir, rank: int) -> int:
    """Adapter parameters by hand: r * (in + out) for every linear layer but the output head
    (PEFT's "all-linear")."""
    model, _ = load_causal_lm(base_dir, fingerprint=False)
    return sum(rank * (m.in_features + m.out_features) for name, m in model.named_modules()
               if isinstance(m, nn.Linear) and name != "lm_head")


def test_lora_seq_records_its_sweep_and_stores_the_whole_adapter_for_every_skill(
        tiny_world, suites):  # noqa: F811 - the fixture
    grid = {"ranks": [2, 4], "lrs": [1e-2]}
    result = execute(inputs("lora_seq", tiny_world.base_dir, suites, **grid),
                     lambda stage, f: None)
    points = result["sweep"]["points"]
    assert [(p["rank"], p["lr"]) for p in points] == [(2, 1e-2), (4, 1e-2)]
    assert all(p["n"] == 2 for p in points)  # the first skill's two validation rows
    assert result["sweep"]["reused_from_seed"] is None
    best = max(points, key=lambda p: (p["val_exact_match"], -p["best_val_loss"], -p["rank"]))
    assert result["chosen"] == {"rank": best["rank"], "lr": best["lr"]}
    adapter = lora_size(tiny_world.base_dir, result["chosen"]["rank"])
    assert result["adapter_params"] == adapter
    assert result["bytes_per_skill"] == {n: 2 * adapter for n in NAMES}
    assert len(result["accuracy_matrix"]) == len(NAMES)
    assert all(len(row) == len(NAMES) for row in result["accuracy_matrix"])


def test_multi_lora_routes_one_adapter_per_skill_and_counts_each(tiny_world, suites,  # noqa: F811
                                                                 monkeypatch):
    def no_sweep(*args, **kwargs):
        raise AssertionError("swept a grid of one point")

    monkeypatch.setattr("skillstore.experiments.baselines.sweep_lora", no_sweep)
    result = execute(inputs("multi_lora", tiny_world.base_dir, suites,
                            ranks=[4], lrs=[1e-2]), lambda stage, f: None)
    assert result["chosen"] == {"rank": 4, "lr": 1e-2}  # the only point: nothing to sweep
    assert result["sweep"] == {"points": [], "reused_from_seed": None}
    assert result["bytes_per_skill"] == {n: 2 * lora_size(tiny_world.base_dir, 4) for n in NAMES}
    first, second = result["routers"]
    assert first == {"router": "none"}  # one adapter and no general prompts: it serves all
    assert second["router"] == "learned" and second["classes"] == NAMES
    assert result["n"] == [[len(ROWS[n]) for n in NAMES]] * len(NAMES)


def test_an_earlier_seeds_choice_is_reused_without_sweeping(tiny_world, suites, monkeypatch):  # noqa: F811
    def no_sweep(*args, **kwargs):
        raise AssertionError("swept although an earlier seed chose")

    monkeypatch.setattr("skillstore.experiments.baselines.sweep_lora", no_sweep)
    earlier = {"seed": 0, "chosen": {"rank": 4, "lr": 2e-2},
               "points": [{"rank": 4, "lr": 2e-2, "val_exact_match": 0.5}]}
    run = inputs("lora_seq", tiny_world.base_dir, suites, ranks=[2, 4], lrs=[1e-2, 2e-2])
    result = execute(dataclasses.replace(run, earlier_sweep=earlier), lambda stage, f: None)
    assert result["chosen"] == {"rank": 4, "lr": 2e-2}
    assert result["sweep"] == {"points": earlier["points"], "reused_from_seed": 0}
    assert result["adapter_params"] == lora_size(tiny_world.base_dir, 4)


def test_a_lora_run_stops_during_its_sweep_when_cancelled(tiny_world, suites):  # noqa: F811
    def cancelled(stage, fraction):
        raise RunCancelled(f"cancelled during {stage}")

    with pytest.raises(RunCancelled, match=r"cancelled during sweep:r2-lr0\.01:"):
        execute(inputs("multi_lora", tiny_world.base_dir, suites, ranks=[2, 4], lrs=[1e-2]),
                cancelled)


def test_the_sweep_is_reused_from_the_first_seed_that_finished_with_a_choice(session):
    from skillstore.catalog.schema import JobStatus

    spec = parse_spec(spec_doc(methods={"lora_seq": None, "naive_ft": None}, seeds=[5, 1, 2]))
    runs = {(r.method, r.seed): r for r in create_experiment(session, spec).runs}
    later = runs["lora_seq", 1]
    assert earlier_sweep(session, later, spec.seeds) is None  # nothing finished yet
    runs["naive_ft", 5].status = JobStatus.succeeded
    runs["naive_ft", 5].result = {"chosen": {"rank": 16, "lr": 1.0}}  # another method's
    first = runs["lora_seq", 5]
    first.status, first.result = JobStatus.running, {"chosen": {"rank": 8, "lr": 1e-3}}
    session.flush()
    assert earlier_sweep(session, later, spec.seeds) is None  # not finished
    first.status = JobStatus.succeeded
    first.result = {"chosen": {"rank": 8, "lr": 1e-3}, "sweep": {"points": [{"rank": 8}]}}
    session.flush()
    found = {"seed": 5, "chosen": {"rank": 8, "lr": 1e-3}, "points": [{"rank": 8}]}
    assert earlier_sweep(session, later, spec.seeds) == found
    assert earlier_sweep(session, runs["lora_seq", 2], spec.seeds) == found
    assert earlier_sweep(session, first, spec.seeds) is None  # the first seed sweeps


def test_a_lora_adapters_factors_are_what_merging_it_adds(tiny_world):
    model, _ = load_causal_lm(tiny_world.base_dir, fingerprint=False)
    wrapped = lora_model(copy.deepcopy(model), LoRAConfig(rank=2))
    with torch.no_grad():  # a trained-looking adapter: B is zero when it is made
        for name, p in wrapped.named_parameters():
            if "lora_B" in name:
                p.normal_()
    parts = lora_parts(wrapped)
    merged_model = wrapped.merge_and_unload()
    assert len(parts) == 14  # 7 linear layers in each of 2 blocks
    for name, part in parts.items():
        before, after = model.get_parameter(name), merged_model.get_parameter(name)
        assert isinstance(part, LowRankPart) and part.rank == 2  # routed at the adapter's rank
        assert part.to_dense().abs().sum() > 0
        torch.testing.assert_close(before + part.to_dense(), after)


def test_a_gpt2_adapters_factors_are_in_conv1d_layout():
    """GPT-2's Conv1D stores its weight (in, out): the factors must multiply out to that."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=40, n_positions=16, n_embd=16, n_layer=1,
                                       n_head=2))
    wrapped = lora_model(copy.deepcopy(model), LoRAConfig(rank=2))
    with torch.no_grad():
        for name, p in wrapped.named_parameters():
            if "lora_B" in name:
                p.normal_()
    parts = lora_parts(wrapped)
    merged_model = wrapped.merge_and_unload()
    assert {n.split(".")[-2] for n in parts} == {"c_attn", "c_proj", "c_fc"}
    for name, part in parts.items():
        before, after = model.get_parameter(name), merged_model.get_parameter(name)
        assert part.shape == tuple(before.shape) and part.rank == 2
        torch.testing.assert_close(before + part.to_dense(), after)


def test_lora_adapters_start_the_same_at_the_same_seed(tiny_world):
    model, _ = load_causal_lm(tiny_world.base_dir, fingerprint=False)

    def first_a(seed: int) -> torch.Tensor:
        config = LoRAConfig(rank=2, sft=SFTConfig(seed=seed))
        wrapped = lora_model(copy.deepcopy(model), config)
        return next(p for n, p in wrapped.named_parameters() if "lora_A" in n).detach()

    torch.testing.assert_close(first_a(3), first_a(3))
    assert not torch.equal(first_a(3), first_a(4))


# Three toy deltas of one tensor; no magnitudes tie, so the top-k trim is unambiguous.
TOY = [torch.tensor([1.0, -2.0, 3.0, 0.5]), torch.tensor([-1.5, -1.0, 2.0, 0.1]),
       torch.tensor([2.0, 1.0, -4.0, 0.2])]


def toy(scale: float = 1.0, density: float | None = None) -> dict:
    return {name: merge_method(name, Merge(scale=scale, density=density), scale)
            for name in ("task_arithmetic", "ties", "dare_ties")
            if not (name == "task_arithmetic" and density is not None)}


def test_task_arithmetic_is_scale_times_the_sum():
    fusion, drop = toy(scale=0.5)["task_arithmetic"]
    out = merged(fusion, [{"w": d} for d in TOY])["w"]
    assert drop is None
    torch.testing.assert_close(out, torch.tensor([0.75, -1.0, 0.5, 0.4]))


def test_ties_trims_elects_a_sign_and_averages_the_agreeing_entries():
    fusion, drop = toy(scale=2.0, density=0.5)["ties"]
    # Trimmed to the top 2 of 4: [0, -2, 3, 0], [-1.5, 0, 2, 0], [2, 0, -4, 0]; summed
    # [0.5, -2, 1, 0] elects + - + (none); the agreeing entries' means are 2, -2, 2.5, 0.
    out = merged(fusion, [{"w": d} for d in TOY])["w"]
    assert drop is None
    torch.testing.assert_close(out, 2.0 * torch.tensor([2.0, -2.0, 2.5, 0.0]))


def test_ties_without_a_density_keeps_the_top_fifth():
    fusion, _ = toy()["ties"]
    assert fusion.density == 0.2


def test_dare_ties_drops_at_random_then_elects_without_trimming():
    fusion, drop = toy(density=0.25)["dare_ties"]
    assert drop == 0.25
    # With nothing dropped, DARE-TIES is sign election and the disjoint mean over whole
    # deltas: sums [1.5, -2, 1, 0.8] elect + - + +; means 1.5, -1.5, 2.5, 0.8/3.
    out = merged(fusion, [{"w": d} for d in TOY])["w"]
    torch.testing.assert_close(out, torch.tensor([1.5, -1.5, 2.5, 0.8 / 3]))
    ones = torch.ones(4000)
    dropped = dare(ones, 0.25, torch.Generator().manual_seed(7))
    assert set(dropped.unique().tolist()) == {0.0, 4.0}  # kept entries rescaled by 1/density
    assert abs(float((dropped > 0).float().mean()) - 0.25) < 0.03
    assert torch.equal(dropped, dare(ones, 0.25, torch.Generator().manual_seed(7)))
    assert not torch.equal(dropped, dare(ones, 0.25, torch.Generator().manual_seed(8)))


def test_each_skill_is_fine_tuned_from_the_base_and_the_deltas_merged(tiny_world):
    """Task arithmetic at scale 1 over two stages leaves base + d1 + d2, where each d is a
    fine-tune of the base alone (not of the previous stage)."""
    model, tok = load_causal_lm(tiny_world.base_dir, fingerprint=False)
    base = copy.deepcopy(model)
    stages = [Stage(n, rows, rows[:2], []) for n, rows in ROWS.items()]
    config = SFTConfig(**QUICK, seed=3)
    fusions, _ = merge_fusions("task_arithmetic", Merge(scale=1.0))
    run = merge_scores(model, tok, stages, [], config, fusions, seed=3)
    assert run.rows == [[], []] and len(run.changed) == 2 and all(c > 0 for c in run.changed)
    assert run.scales == [{"chosen": 1.0, "points": []}] * 2  # a fixed scale: nothing swept
    tuned = []
    for stage in stages:
        alone = copy.deepcopy(base)
        train_sft(alone, tok, stage.train, stage.validation, config)
        tuned.append(alone)
    for name, p in model.named_parameters():
        b = base.get_parameter(name)
        expected = b + sum(t.get_parameter(name) - b for t in tuned)
        torch.testing.assert_close(p, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["lora_seq", "multi_lora", "task_arithmetic", "ties",
                                    "dare_ties"])
def test_the_baselines_are_runnable(method):
    settings = {"density": 0.5} if method in ("ties", "dare_ties") else {}
    check_runnable(parse_spec(spec_doc(methods={method: settings})))


def test_the_merge_scale_is_the_best_on_the_validation_rows_so_far(tiny_world, monkeypatch):
    """Each stage's merge is scored at every scale of the grid on the validation rows of the
    stages so far; the best mean exact match wins (ties: the scale nearest 1), and the model is
    left holding the merge at that scale."""
    from skillstore.experiments import baselines as baselines_mod

    model, tok = load_causal_lm(tiny_world.base_dir, fingerprint=False)
    base = weights_of(model)
    one = {n: torch.full_like(w, 0.01) for n, w in base.items()}
    fusions, _ = merge_fusions("task_arithmetic", Merge(scales=(0.5, 1.0, 1.5)))
    stages = [Stage(n, rows, rows[:2], []) for n, rows in ROWS.items()]
    # A stand-in for the validation score that peaks at the merge of scale 1.0.
    seen = []

    def score(model_, tok_, rows, *, limit=None):
        shift = float(next(iter(model_.parameters())).flatten()[0]
                      - next(iter(base.values())).flatten()[0])
        seen.append((round(shift / 0.01, 3), rows[0]["prompt"]))
        return ExactMatch(1.0 - abs(shift / 0.01 - 1.0), len(rows), 0)

    monkeypatch.setattr(baselines_mod, "exact_match", score)
    picked = pick_scale(model, tok, base, [one], fusions, stages, limit=4)
    assert picked["chosen"] == 1.0
    assert [p["scale"] for p in picked["points"]] == [0.5, 1.0, 1.5]
    assert picked["points"][1]["val_accuracy"] == pytest.approx(1.0)
    # every scale scored on both stages' validation rows; the model holds base + 1.0 x delta
    assert sorted({s for s, _ in seen}) == [0.5, 1.0, 1.5] and len(seen) == 6
    for n, p in model.named_parameters():
        torch.testing.assert_close(p, base[n] + one[n], rtol=1e-5, atol=1e-6)
    # a tie goes to the scale nearest 1, the plain merge; between 0.5 and 1.5, to 1.5
    monkeypatch.setattr(baselines_mod, "exact_match",
                        lambda *a, **k: ExactMatch(0.5, 2, 1))
    assert pick_scale(model, tok, base, [one], fusions, stages)["chosen"] == 1.0
    apart = {s: f for s, f in fusions.items() if s != 1.0}
    assert pick_scale(model, tok, base, [one], apart, stages)["chosen"] == 1.5
