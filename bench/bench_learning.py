"""Learning-core benchmark: SFT, distillation, LoRA and sequential forgetting on the tiny zoo."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

# Recipes of the measured runs; the zoo's own recipe is the default ZooRecipe.
SFT_STEPS = int(os.environ.get("SKILLSTORE_BENCH_SFT_STEPS", "500"))
LORA_RANKS = (8, 64)


def _sft_config():
    from skillstore.training.sft import SFTConfig

    return SFTConfig(lr=3e-3, max_steps=SFT_STEPS, batch_size=32, eval_every=100, patience=3)


def _acc(model, tok, rows) -> float:
    from skillstore.training.generate import exact_match

    return exact_match(model, tok, rows).accuracy


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
    from skillstore.training.distill import distill
    from skillstore.training.sft import train_sft

    files = cur.skills[name]
    train, val, test = load_rows(files.train), load_rows(files.validation), load_rows(files.test)
    general = load_rows(cur.general.test)
    model, tok = load_causal_lm(zoo.target, fingerprint=False)
    source, source_tok = load_causal_lm(zoo.sources["gpt2"], fingerprint=False)
    row = {"skill": name, "base": _acc(model, tok, test), "source": _acc(source, source_tok, test)}
    result, row["sft_seconds"] = _timed(lambda: train_sft(model, tok, train, val, _sft_config()))
    row["sft"] = _acc(result.model, tok, test)
    row["sft_steps"] = result.metrics["steps"]
    row["general_after_sft"] = _acc(result.model, tok, general)
    model, _ = load_causal_lm(zoo.target, fingerprint=False)
    try:
        result, row["distill_seconds"] = _timed(lambda: distill(
            source, source_tok, model, tok, [r["prompt"] for r in train], [r["prompt"] for r in val],
            checker=SKILLS[name].check, sft=_sft_config()))
        row["distill"] = _acc(result.model, tok, test)
        row["distill_acceptance"] = result.metrics["distill"]["acceptance"]
    except TrainingError:  # the source got no answer right: nothing to distil
        row.update(distill=0.0, distill_acceptance=0.0, distill_seconds=0.0)
    for rank in LORA_RANKS:
        model, _ = load_causal_lm(zoo.target, fingerprint=False)
        cfg = LoRAConfig(rank=rank, sft=_sft_config().model_copy(update={"lr": 5e-3}))
        result, row[f"lora{rank}_seconds"] = _timed(lambda cfg=cfg, model=model: train_lora(model, tok, train, val, cfg))
        row[f"lora{rank}"] = _acc(result.model, tok, test)
    return row


def _sequential(zoo, cur) -> dict:
    from skillstore.curriculum.validate import load_rows
    from skillstore.models import load_causal_lm
    from skillstore.training.baselines import Stage, train_joint, train_sequential

    stages = [Stage(n, load_rows(f.train), load_rows(f.validation), load_rows(f.test))
              for n, f in cur.skills.items()]
    model, tok = load_causal_lm(zoo.target, fingerprint=False)
    _, matrix = train_sequential(model, tok, stages, _sft_config())
    general_final = _acc(model, tok, load_rows(cur.general.test))
    model, tok = load_causal_lm(zoo.target, fingerprint=False)
    joint, seconds = _timed(lambda: train_joint(model, tok, stages, _sft_config().model_copy(
        update={"max_steps": SFT_STEPS * 2})))
    return {"skills": [s.name for s in stages], "matrix": matrix, "general_final": general_final,
            "joint": {s.name: _acc(joint.model, tok, s.test) for s in stages}, "joint_seconds": seconds}


def _table(rows: list[dict]) -> str:
    head = ("| skill | base | source | SFT | SFT s | distill | distill/SFT | accept | LoRA r8 | LoRA r64 | general after SFT |\n"
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    lines = [head]
    for r in rows:
        ratio = r["distill"] / r["sft"] if r["sft"] else float("nan")
        lines.append(f"| {r['skill']} | {r['base']:.2f} | {r['source']:.2f} | {r['sft']:.3f} | {r['sft_seconds']:.0f} | "
                     f"{r['distill']:.3f} | {ratio:.2f} | {r['distill_acceptance']:.2f} | {r['lora8']:.3f} | "
                     f"{r['lora64']:.3f} | {r['general_after_sft']:.2f} |")
    return "\n".join(lines)


def _matrix_table(seq: dict) -> str:
    names = seq["skills"]
    lines = ["| after \\ on | " + " | ".join(names) + " |", "| --- |" + " --- |" * len(names)]
    for name, row in zip(names, seq["matrix"], strict=True):
        lines.append(f"| {name} | " + " | ".join(f"{v:.2f}" for v in row) + " |")
    lines.append("| joint | " + " | ".join(f"{seq['joint'][n]:.2f}" for n in names) + " |")
    return "\n".join(lines)


def run(out_dir: Path) -> None:
    """Build (or reuse) the zoo, train every skill every way, print tables, write JSON."""
    import tempfile

    import torch

    from skillstore.zoo import build_zoo, zoo_manifest

    if os.environ.get("SKILLSTORE_BENCH_THREADS"):
        # On a CPU shared with other jobs one thread per process is several times faster.
        torch.set_num_threads(int(os.environ["SKILLSTORE_BENCH_THREADS"]))

    home = Path(os.environ.get("SKILLSTORE_BENCH_HOME") or tempfile.mkdtemp(prefix="skillstore-bench-"))
    (zoo, zoo_seconds) = _timed(lambda: build_zoo(home))
    manifest = zoo_manifest(zoo)
    cur = zoo.load_curriculum()
    skills = os.environ.get("SKILLSTORE_BENCH_SKILLS", ",".join(cur.skills)).split(",")
    rows = []
    for name in skills:
        rows.append(_per_skill(zoo, cur, name))
        print(json.dumps(rows[-1]), flush=True)
    seq = _sequential(zoo, cur) if os.environ.get("SKILLSTORE_BENCH_SEQUENTIAL", "1") == "1" else None
    report = {"zoo_build_seconds": manifest["seconds"], "zoo_cached_call_seconds": zoo_seconds,
              "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
              "per_skill": rows, "sequential": seq,
              "sft_at_95": sum(r["sft"] >= 0.95 for r in rows),
              "distill_over_sft": {r["skill"]: (r["distill"] / r["sft"] if r["sft"] else None) for r in rows}}
    print(f"\nzoo build: {manifest['seconds']:.0f} s ({torch.get_num_threads()} torch threads; "
          "the CPUs were shared with other jobs, so times are pessimistic)\n")
    print(_table(rows))
    if seq:
        print("\nNaive sequential fine-tuning, exact match on each skill's test split after each stage:\n")
        print(_matrix_table(seq))
        print(f"\ngeneral suite after the last stage: {seq['general_final']:.2f}")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "learning.json").write_text(json.dumps(report, indent=2) + "\n")
