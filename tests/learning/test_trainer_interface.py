"""The trainer contract, run on every registered trainer on every registered backend: one added to
TRAINERS or BACKENDS is checked here."""

from __future__ import annotations

import json

import pytest
import torch

from skillstore.curriculum.validate import write_jsonl
from skillstore.models import load_causal_lm
from skillstore.training.backends import BACKENDS
from skillstore.training.baselines import LoRAConfig
from skillstore.training.dpo import DPOConfig
from skillstore.training.generate import generate_answers
from skillstore.training.protocol import Backend, Trainer
from skillstore.training.run import TRAINERS, TrainJob
from skillstore.training.sft import SFTConfig, TrainResult, train_sft
from tests.composition.tinymodel import save, tiny_llama, tiny_tokenizer

ROWS = [{"prompt": f"add: {a}+{b} =", "answer": str(a + b)}
        for a, b in ((1, 2), (3, 4), (2, 5), (6, 1))]
TWO_STEPS = SFTConfig(lr=1e-2, max_steps=2, batch_size=4, eval_every=2)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A saved tiny base, and a source that answers ROWS right (the checker keeps its answers)."""
    root = tmp_path_factory.mktemp("trainers")
    tok = tiny_tokenizer()
    base_dir = save(tiny_llama(tok), tok, root / "base")
    source = tiny_llama(tok, seed=1)
    train_sft(source, tok, ROWS, None, SFTConfig(lr=1e-2, max_steps=40, batch_size=4, eval_every=40,
                                                 warmup_frac=0.1))
    assert generate_answers(source, tok, [r["prompt"] for r in ROWS]) == [r["answer"] for r in ROWS]
    return {"base": base_dir, "source": save(source, tok, root / "source"),
            "train": write_jsonl(root / "train.jsonl", ROWS), "root": root}


def job_for(world, name: str, backend: str = "builtin") -> TrainJob:
    return TrainJob(base_dir=world["base"], train_path=world["train"],
                    out_dir=world["root"] / f"out-{name}-{backend}", backend=backend,
                    source_dir=world["source"] if name in ("distill", "dpo") else None,
                    sft=TWO_STEPS, lora=LoRAConfig(rank=4, sft=TWO_STEPS),
                    dpo=DPOConfig(lr=1e-2, max_steps=2, batch_size=4, samples=0,
                                  synthetic_rejected=True))


@pytest.mark.parametrize("backend", list(BACKENDS.values()), ids=list(BACKENDS))
@pytest.mark.parametrize("trainer", list(TRAINERS.values()), ids=list(TRAINERS))
def test_trainer_trains_a_tiny_model_in_memory(world, trainer, backend):
    assert isinstance(trainer, Trainer) and trainer.description.strip()
    assert isinstance(backend, Backend) and backend.description.strip()
    model, tok = load_causal_lm(world["base"], fingerprint=False)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    job = job_for(world, trainer.name, backend.name)
    calls = []
    result = trainer.train(job, model, tok, lambda stage, frac: calls.append((stage, frac)))

    assert isinstance(result, TrainResult)
    after = result.model.state_dict()
    # A plain checkpoint of the base's architecture: packs are deltas against the base.
    assert type(result.model) is type(model)
    assert ({k: tuple(v.shape) for k, v in after.items()}
            == {k: tuple(v.shape) for k, v in before.items()})
    changed = [k for k, v in after.items() if not torch.equal(v.cpu(), before[k])]
    assert changed, f"{trainer.name} left every weight as it was"
    assert all(torch.isfinite(v).all() for v in after.values())
    assert calls and all(isinstance(s, str) and 0.0 <= f <= 1.0 for s, f in calls)
    json.dumps({k: v for k, v in result.metrics.items() if k != "distilled_rows"})
    # The backend that ran is the one asked for, and it says so with the seed it ran with.
    stage = result.metrics["dpo"] if trainer.name == "dpo" else result.metrics
    assert stage["backend"] == backend.name and stage["seed"] == 0
    # A trainer hands back a plain model: nothing a trainer library patched onto it stays.
    assert "forward" not in vars(result.model)
    assert not job.out_dir.exists(), "a trainer saves nothing; run_training does"
