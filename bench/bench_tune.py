"""Pack tuning toward the rows' answers against toward the fine-tune (`tune_pack(...,
teacher=)`), for issue 16's curriculum target: `compact` at 5% or less keeping at least 0.99
of the fine-tune's accuracy on every skill.

Each curriculum skill of the zoo is fine-tuned as the demo's graft run fine-tunes it (the
built-in `demo` spec's SFT settings; ``SKILLSTORE_BENCH_TUNE_SFT=bench`` uses the learning
bench's longer `BENCH_SFT` instead), compressed at the demo's budget, then tuned from that
same pack for the same steps with each objective. Scored by greedy exact match per prompt on
the skill's first 200 test prompts: accuracy, accuracy over the fine-tune's (normalised),
agreement with the fine-tune's own answers, and the paired McNemar difference between the
two objectives on the same prompts.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

from bench.bench_packs import _tiny_tuned, greedy_answers
from skillstore.packs import compress_checkpoint, grafted
from skillstore.packs.policy import load_policy

SKILLS = [s for s in os.environ.get("SKILLSTORE_BENCH_TUNE_SKILLS", "").split(",") if s]
SFT_KIND = os.environ.get("SKILLSTORE_BENCH_TUNE_SFT", "demo")
THREADS = int(os.environ.get("SKILLSTORE_BENCH_THREADS", "1"))
N_TEST = 200


def _row(label: str, answers: list[str], rows, tuned: list[str], **extra) -> dict:
    right = [int(a == r["answer"].strip()) for a, r in zip(answers, rows, strict=True)]
    same = [int(a == t) for a, t in zip(answers, tuned, strict=True)]
    return {"label": label, "scores": right, "accuracy": sum(right) / len(right),
            "agreement": sum(same) / len(same), **extra}


def tune_skill(zoo, cur, skill: str, base_model, tok, out: Path) -> dict:
    from skillstore.curriculum.validate import load_rows
    from skillstore.evaluation.stats import mcnemar_exact
    from skillstore.experiments.spec import load_spec
    from skillstore.models import load_causal_lm
    from skillstore.packs.tune import TuneConfig, tune_pack
    from skillstore.training.sft import SFTConfig

    from .bench_learning import BENCH_SFT

    spec = load_spec("demo")
    sft = spec.train if SFT_KIND == "demo" else SFTConfig(**BENCH_SFT)
    steps = spec.methods.graft.tune_steps
    files = cur.skills[skill]
    train, test = load_rows(files.train), load_rows(files.test)[:N_TEST]
    tuned_dir = _tiny_tuned(zoo, cur, skill, out, sft, kind=f"tune-{SFT_KIND}")
    tuned_model, _ = load_causal_lm(tuned_dir, fingerprint=False)
    reference = greedy_answers(tuned_model, tok, test)
    packs = out / "tune-packs"
    packs.mkdir(exist_ok=True)
    policy = load_policy(spec.methods.graft.policy, budget=spec.methods.graft.budget / 100)
    pack = compress_checkpoint(zoo.target, tuned_dir, policy, packs / f"{skill}.safetensors")
    rows = [_row("fine-tune", reference, test, reference)]
    with grafted(base_model, pack.path):
        rows.append(_row("compressed, untuned", greedy_answers(base_model, tok, test), test,
                         reference, bytes=pack.bytes,
                         file_ratio=pack.bytes / pack.dense_fp16_bytes))
    for label, teacher in (("tuned on the rows' answers", None),
                           ("tuned toward the fine-tune", tuned_model)):
        started = time.perf_counter()
        result = tune_pack(pack.path, base_model, tok, train,
                           packs / f"{skill}-{'labels' if teacher is None else 'teacher'}"
                           ".safetensors", TuneConfig(steps=steps), teacher=teacher)
        seconds = time.perf_counter() - started
        with grafted(base_model, result.path):
            rows.append(_row(label, greedy_answers(base_model, tok, test), test, reference,
                             bytes=result.bytes, file_ratio=result.bytes / pack.dense_fp16_bytes,
                             seconds=seconds, loss=[result.loss_before, result.loss_after]))
    tuned_acc = rows[0]["accuracy"]
    for r in rows:
        r["normalised"] = r["accuracy"] / tuned_acc if tuned_acc else None
    for r in rows[1:]:  # the pack against its own fine-tune, paired on the same prompts
        d = mcnemar_exact(rows[0]["scores"], r["scores"])
        r["minus_finetune"] = {"difference": d.difference, "ci": [d.low, d.high], "p": d.p_value}
    t = mcnemar_exact(rows[2]["scores"], rows[3]["scores"])
    return {"skill": skill, "n": len(test), "sft": sft.model_dump(), "tune_steps": steps,
            "rows": rows, "teacher_minus_labels": {"difference": t.difference,
                                                   "ci": [t.low, t.high], "p": t.p_value}}


def markdown(results: dict) -> str:
    lines = [f"SFT: {results['sft']}; tune steps {results['tune_steps']}; {results['threads']} "
             "torch thread(s)", "",
             "| skill | n | fine-tune | pack | file % | accuracy | normalised | pack - fine-tune "
             "[95%] | agrees with fine-tune |", "|---|---|---|---|---|---|---|---|---|"]
    for s in results["skills"]:
        for r in s["rows"][1:]:
            ratio = f"{100 * r['file_ratio']:.2f}"
            norm = "-" if r["normalised"] is None else f"{r['normalised']:.3f}"
            d = r["minus_finetune"]
            lines.append(f"| {s['skill']} | {s['n']} | {s['rows'][0]['accuracy']:.3f} | "
                         f"{r['label']} | {ratio} | {r['accuracy']:.3f} | {norm} | "
                         f"{d['difference']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}] | "
                         f"{r['agreement']:.3f} |")
    lines += ["", "| skill | teacher - labels (exact match) | 95% interval | McNemar p |",
              "|---|---|---|---|"]
    for s in results["skills"]:
        d = s["teacher_minus_labels"]
        lines.append(f"| {s['skill']} | {d['difference']:+.3f} | [{d['ci'][0]:+.3f}, "
                     f"{d['ci'][1]:+.3f}] | {d['p']:.3g} |")
    return "\n".join(lines)


def run(out_dir: Path) -> dict:
    from skillstore.models import load_causal_lm
    from skillstore.zoo.build import build_zoo

    torch.set_num_threads(THREADS)
    zoo = build_zoo()
    cur = zoo.load_curriculum()
    base_model, tok = load_causal_lm(zoo.target)
    skills = [tune_skill(zoo, cur, s, base_model, tok, out_dir) for s in SKILLS or cur.skills]
    results = {"skills": skills, "sft": skills[0]["sft"], "tune_steps": skills[0]["tune_steps"],
               "threads": THREADS}
    (out_dir / "tune.json").write_text(json.dumps(results, indent=1))
    print(markdown(results), flush=True)
    return results
