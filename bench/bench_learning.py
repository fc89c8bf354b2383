"""Learning-core benchmark: SFT, distillation, LoRA and sequential forgetting on the tiny zoo."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

# SFT and distillation run at batch 128, lr 2e-3, on a 6,000-step schedule: in the sweep
# (docs/learning.md) that took sort and add past 95% by step 2,000 on the zoo target of recipe
# d6f40db5, where the library's default (batch 32, lr 3e-3, sized for real models' memory)
# stalls at 0.67 and 0.08. On the rebuilt zoo's target (ef390e1b) the same setting reached
# only sort 0.74 and add 0.69 by step 4,000-5,000: this tiny model learns them in some
# initialisations and not in others. Patience 20 rides out the plateau before addition
# clicks; the stop loss ends the easy skills early. The baselines (LoRA, sequential, joint)
# keep the library default: they show forgetting and parameter efficiency, not the ceiling,
# and at the long setting they would add hours on a CPU.
# SKILLSTORE_BENCH_SFT_STEPS overrides max_steps for a quicker, weaker run.
SFT_STEPS = os.environ.get("SKILLSTORE_BENCH_SFT_STEPS")
# Batch 128 at lr 2e-3 (the session-3 sweep); on the session-4 zoo a 2,000-step schedule
# learns all five skills (reverse too, which stalled near 0.1 on the 6,000-step one).
BENCH_SFT = {"lr": 2e-3, "batch_size": 128, "max_steps": 2000, "eval_every": 100}
# Greedy first, then up to four sampled retries: on the zoo's source this verifies 0.74 of
# sort's prompts instead of 0.63, and 0.68 of add's instead of 0.49 (docs/learning.md).
BENCH_GENERATION = {"do_sample": True, "samples": 5, "temperature": 0.7}
LORA_RANKS = (8, 64)
LORA_LR = 5e-3
# The targets.
SFT_TARGET, SFT_SKILLS_NEEDED, DISTILL_RATIO, SKILL_SECONDS, ZOO_SECONDS = 0.95, 4, 0.90, 120, 120


def _sft_config(baseline: bool = False):
    from skillstore.training.sft import SFTConfig

    cfg = SFTConfig() if baseline else SFTConfig(**BENCH_SFT)
    return cfg.model_copy(update={"max_steps": int(SFT_STEPS)}) if SFT_STEPS else cfg


def _acc(model, tok, rows) -> float:
    from skillstore.training.generate import exact_match

    return exact_match(model, tok, rows).accuracy


def _load() -> float:
    return round(os.getloadavg()[0], 1)


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def _per_skill(zoo, cur, name: str) -> dict:
    from skillstore.curriculum.skills import SKILLS
    from skillstore.curriculum.validate import load_rows
    from skillstore.errors import TrainingError
    from skillstore.models import load_causal_lm
    from skillstore.training.baselines import LoRAConfig, train_lora
    from skillstore.training.distill import GenerationConfig, distill
    from skillstore.training.sft import train_sft

    files = cur.skills[name]
    train, val, test = load_rows(files.train), load_rows(files.validation), load_rows(files.test)
    general = load_rows(cur.general.test)
    model, tok = load_causal_lm(zoo.target, fingerprint=False)
    source, source_tok = load_causal_lm(zoo.sources["gpt2"], fingerprint=False)
    row = {"skill": name, "base": _acc(model, tok, test), "source": _acc(source, source_tok, test),
           "load_before": _load()}
    result, row["sft_seconds"] = _timed(lambda: train_sft(model, tok, train, val, _sft_config()))
    row["load_after_sft"] = _load()
    row["sft"] = _acc(result.model, tok, test)
    row["sft_steps"] = result.metrics["steps"]
    row["general_after_sft"] = _acc(result.model, tok, general)
    model, _ = load_causal_lm(zoo.target, fingerprint=False)
    try:
        result, row["distill_seconds"] = _timed(lambda: distill(
            source, source_tok, model, tok,
            [r["prompt"] for r in train], [r["prompt"] for r in val],
            checker=SKILLS[name].check, generation=GenerationConfig(**BENCH_GENERATION),
            sft=_sft_config()))
        row["distill"] = _acc(result.model, tok, test)
        row["distill_acceptance"] = result.metrics["distill"]["acceptance"]
    except TrainingError:  # the source got no answer right: nothing to distil
        row.update(distill=0.0, distill_acceptance=0.0, distill_seconds=0.0)
    for rank in LORA_RANKS:
        model, _ = load_causal_lm(zoo.target, fingerprint=False)
        cfg = LoRAConfig(rank=rank,
                         sft=_sft_config(baseline=True).model_copy(update={"lr": LORA_LR}))
        result, row[f"lora{rank}_seconds"] = _timed(
            lambda cfg=cfg, model=model: train_lora(model, tok, train, val, cfg))
        row[f"lora{rank}"] = _acc(result.model, tok, test)
    row["load_after"] = _load()
    return row


def _sequential(zoo, cur) -> dict:
    from skillstore.curriculum.validate import load_rows
    from skillstore.models import load_causal_lm
    from skillstore.training.baselines import Stage, train_joint, train_sequential

    stages = [Stage(n, load_rows(f.train), load_rows(f.validation), load_rows(f.test))
              for n, f in cur.skills.items()]
    model, tok = load_causal_lm(zoo.target, fingerprint=False)
    _, matrix = train_sequential(model, tok, stages, _sft_config(baseline=True))
    general_final = _acc(model, tok, load_rows(cur.general.test))
    model, tok = load_causal_lm(zoo.target, fingerprint=False)
    cfg = _sft_config(baseline=True)
    joint, seconds = _timed(lambda: train_joint(model, tok, stages, cfg.model_copy(
        update={"max_steps": cfg.max_steps * 2})))
    return {"skills": [s.name for s in stages], "matrix": matrix, "general_final": general_final,
            "joint": {s.name: _acc(joint.model, tok, s.test) for s in stages},
            "joint_seconds": seconds}


def _table(rows: list[dict]) -> str:
    head = ("| skill | base | source | SFT | SFT s | distill | distill/SFT | accept | distill s "
            "| LoRA r8 | LoRA r64 | general after SFT | load |\n"
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    lines = [head]
    for r in rows:
        ratio = r["distill"] / r["sft"] if r["sft"] else float("nan")
        lines.append(f"| {r['skill']} | {r['base']:.2f} | {r['source']:.2f} | {r['sft']:.3f} | "
                     f"{r['sft_seconds']:.0f} | {r['distill']:.3f} | {ratio:.2f} | "
                     f"{r['distill_acceptance']:.2f} | {r['distill_seconds']:.0f} | "
                     f"{r['lora8']:.3f} | {r['lora64']:.3f} | {r['general_after_sft']:.2f} | "
                     f"{r['load_before']}-{r['load_after']} |")
    return "\n".join(lines)


def _matrix_table(seq: dict) -> str:
    names = seq["skills"]
    lines = ["| after \\ on | " + " | ".join(names) + " |", "| --- |" + " --- |" * len(names)]
    for name, row in zip(names, seq["matrix"], strict=True):
        lines.append(f"| {name} | " + " | ".join(f"{v:.2f}" for v in row) + " |")
    lines.append("| joint | " + " | ".join(f"{seq['joint'][n]:.2f}" for n in names) + " |")
    return "\n".join(lines)


def targets(rows: list[dict], zoo_seconds: float) -> list[tuple[str, bool, str]]:
    """The issue's targets as (name, met, measured) from the per-skill rows."""
    at_95 = [r["skill"] for r in rows if r["sft"] >= SFT_TARGET]
    ratios = {r["skill"]: (r["distill"] / r["sft"] if r["sft"] else 0.0) for r in rows}
    distilled = [s for s, v in ratios.items() if v >= DISTILL_RATIO]
    slowest = max(rows, key=lambda r: r["sft_seconds"])
    fastest = min(rows, key=lambda r: r["sft_seconds"])
    return [
        (f"SFT >= {SFT_TARGET:.0%} on >= {SFT_SKILLS_NEEDED} of {len(rows)} skills",
         len(at_95) >= min(SFT_SKILLS_NEEDED, len(rows)),
         f"{len(at_95)} ({', '.join(at_95) or 'none'})"),
        (f"distillation >= {DISTILL_RATIO:.0%} of SFT", len(distilled) == len(rows),
         f"{len(distilled)} of {len(rows)}: "
         + ", ".join(f"{s} {v:.2f}" for s, v in ratios.items())),
        (f"one skill trains in < {SKILL_SECONDS} s", fastest["sft_seconds"] < SKILL_SECONDS,
         f"fastest SFT {fastest['sft_seconds']:.0f} s ({fastest['skill']}, "
         f"{fastest['sft_steps']} steps), slowest {slowest['sft_seconds']:.0f} s "
         f"({slowest['skill']}, {slowest['sft_steps']} steps); load "
         f"{slowest['load_before']}-{slowest['load_after_sft']}"),
        (f"zoo builds in < {ZOO_SECONDS} s", zoo_seconds < ZOO_SECONDS, f"{zoo_seconds:.0f} s"),
    ]


def run(out_dir: Path) -> None:
    """Build (or reuse) the zoo, train every skill every way, print tables, write JSON."""
    import tempfile

    import torch

    from skillstore.models import pick_device
    from skillstore.zoo import build_zoo, zoo_manifest

    if os.environ.get("SKILLSTORE_BENCH_THREADS"):
        # On a CPU shared with other jobs one thread per process is several times faster.
        torch.set_num_threads(int(os.environ["SKILLSTORE_BENCH_THREADS"]))

    home = Path(os.environ.get("SKILLSTORE_BENCH_HOME")
                or tempfile.mkdtemp(prefix="skillstore-bench-"))
    load_start = _load()
    (zoo, zoo_seconds) = _timed(lambda: build_zoo(home))
    manifest = zoo_manifest(zoo)
    cur = zoo.load_curriculum()
    skills = os.environ.get("SKILLSTORE_BENCH_SKILLS", ",".join(cur.skills)).split(",")
    rows = []
    for name in skills:
        rows.append(_per_skill(zoo, cur, name))
        print(json.dumps(rows[-1]), flush=True)
    sequential = os.environ.get("SKILLSTORE_BENCH_SEQUENTIAL", "1") == "1"
    seq = _sequential(zoo, cur) if sequential else None
    checks = targets(rows, manifest["seconds"])
    report = {"zoo_build_seconds": manifest["seconds"], "zoo_cached_call_seconds": zoo_seconds,
              "zoo_digest": manifest["digest"], "sft_config": _sft_config().model_dump(),
              "baseline_config": _sft_config(baseline=True).model_dump(),
              "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
              "device": str(pick_device()),
              "load_average": {"start": load_start, "end": _load()},
              "per_skill": rows, "sequential": seq,
              "targets": [{"target": t, "met": met, "measured": m} for t, met, m in checks]}
    print(f"\nzoo build: {manifest['seconds']:.0f} s; SFT: {_sft_config().max_steps} max steps, lr "
          f"{_sft_config().lr}, batch {_sft_config().batch_size}; on {pick_device()}, "
          f"{torch.get_num_threads()} torch threads on {os.cpu_count()} CPUs; "
          f"load average {load_start} at the start, {_load()} at the end\n")
    print(_table(rows))
    if seq:
        print("\nNaive sequential fine-tuning, exact match on each skill's test split after "
              "each stage:\n")
        print(_matrix_table(seq))
        print(f"\ngeneral suite after the last stage: {seq['general_final']:.2f}")
    print("\n| target | met | measured |\n| --- | --- | --- |")
    for name, met, measured in checks:
        print(f"| {name} | {'met' if met else 'missed'} | {measured} |")
    out_dir.mkdir(parents=True, exist_ok=True)
    tag = os.environ.get("SKILLSTORE_BENCH_TAG", "")
    out_path = out_dir / f"learning{'-' + tag if tag else ''}.json"
    out_path.write_text(json.dumps(report, indent=2) + "\n")
