"""Distillation crosses tokenizers through text, and training moves held-out accuracy."""

from __future__ import annotations

import itertools
import random
import string

from skillstore.curriculum.skills import SKILLS
from skillstore.curriculum.validate import load_rows
from skillstore.models import load_causal_lm
from skillstore.training.distill import distill, source_rows
from skillstore.training.generate import exact_match, generate_answers
from skillstore.training.sft import SFTConfig, train_sft

FAST = SFTConfig(lr=1e-2, max_steps=80, batch_size=8, eval_every=40, warmup_frac=0.1)


def test_distillation_goes_through_text_between_two_tokenizers(mini_zoo):
    rows = load_rows(mini_zoo.load_curriculum().skills["knowledge"].test)[:6]
    source, source_tok = load_causal_lm(mini_zoo.sources["gpt2"], fingerprint=False)
    target, target_tok = load_causal_lm(mini_zoo.target, fingerprint=False)
    prompt = rows[0]["prompt"]
    assert source_tok(prompt)["input_ids"] != target_tok(prompt)["input_ids"]
    assert len(source_tok) != len(target_tok)
    # Teach the source the facts first, so it has something to pass on.
    train_sft(source, source_tok, rows, None, FAST)
    prompts = [r["prompt"] for r in rows]
    spoken = generate_answers(source, source_tok, prompts)
    assert sum(SKILLS["knowledge"].check(p, a) for p, a in zip(prompts, spoken, strict=True)) >= 4
    before = exact_match(target, target_tok, rows).accuracy
    result = distill(source, source_tok, target, target_tok, prompts,
                     checker=SKILLS["knowledge"].check, sft=FAST)
    taught = result.metrics["distilled_rows"]
    # Exactly the source's verified text reached the target, re-encoded by the target's tokenizer.
    assert taught == [{"prompt": p, "answer": a} for p, a in zip(prompts, spoken, strict=True)
                      if SKILLS["knowledge"].check(p, a)]
    assert all(isinstance(r["answer"], str) for r in taught)
    assert result.metrics["distill"]["n_kept"] == len(taught)
    after = exact_match(target, target_tok, taught).accuracy
    assert after >= 0.75 > before


def test_checker_filters_the_source_answers(mini_zoo):
    source, source_tok = load_causal_lm(mini_zoo.sources["gpt2"], fingerprint=False)
    prompts = [r["prompt"] for r in load_rows(mini_zoo.load_curriculum().skills["add"].test)[:8]]
    everything, stats_all = source_rows(source, source_tok, prompts, checker=lambda p, a: True)
    nothing, stats_none = source_rows(source, source_tok, prompts, checker=lambda p, a: False)
    assert nothing == [] and stats_none["acceptance"] == 0
    assert stats_all["n_generated"] == len(prompts)
    spoken = generate_answers(source, source_tok, prompts)
    assert everything == [{"prompt": p, "answer": a}
                          for p, a in zip(prompts, spoken, strict=True) if a]
    first_two = set(prompts[:2])
    some, stats_some = source_rows(source, source_tok, prompts, checker=lambda p, a: p in first_two)
    assert {r["prompt"] for r in some} <= first_two


def test_sampled_retries_start_from_the_greedy_answer(monkeypatch):
    import importlib

    from skillstore.training.distill import GenerationConfig

    # the module, not the function
    distill_mod = importlib.import_module("skillstore.training.distill")
    calls = []

    def fake(model, tok, pending, *, do_sample, seed, **kw):  # greedy says G, samples say S<seed>
        calls.append((list(pending), do_sample))
        return [f"S{seed}" if do_sample else "G" for _ in pending]

    monkeypatch.setattr(distill_mod, "generate_answers", fake)
    prompts = ["p0", "p1", "p2"]
    wanted = {"p0": "G", "p1": "S2"}  # p0 right at once, p1 on the second sampled retry, p2 never
    cfg = GenerationConfig(do_sample=True, samples=3, temperature=0.7)
    rows, stats = source_rows(None, None, prompts, checker=lambda p, a: wanted.get(p) == a,
                              config=cfg)
    assert [sample for _, sample in calls] == [False, True, True]
    assert [pending for pending, _ in calls] == [prompts, ["p1", "p2"], ["p1", "p2"]]
    assert rows == [{"prompt": "p0", "answer": "G"}, {"prompt": "p1", "answer": "S2"}]
    assert stats["n_generated"] == 7 and stats["acceptance"] == 2 / 3
    calls.clear()
    source_rows(None, None, prompts, checker=lambda p, a: False,
                config=cfg.model_copy(update={"greedy_first": False}))
    assert [sample for _, sample in calls] == [True, True, True]


def _last_letter_rows(strings: list[str]) -> list[dict]:
    return [{"prompt": f"last: {s} =", "answer": s[-1]} for s in strings]


def test_training_moves_accuracy_on_a_held_out_split(mini_zoo):
    words = ["".join(w) for w in
             itertools.product(string.ascii_lowercase[:8], repeat=3)]
    random.Random(0).shuffle(words)
    train, held_out = _last_letter_rows(words[:300]), _last_letter_rows(words[300:364])
    model, tok = load_causal_lm(mini_zoo.target, fingerprint=False)
    before = exact_match(model, tok, held_out).accuracy
    train_sft(model, tok, train, held_out[:16],
              SFTConfig(lr=1e-2, max_steps=120, batch_size=16, eval_every=60))
    after = exact_match(model, tok, held_out).accuracy
    assert before < 0.3
    assert after >= 0.8
