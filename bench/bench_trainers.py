"""Trainers benchmark: the built-in loop against TRL on the zoo, and TRL's memory at 0.5B shape.

Part 1 fine-tunes the zoo's target on each curriculum skill with each backend at the same
settings (`backend.sft`, the call `run_training` makes; both loops draw a seed's batches from
`data.batch_plan` and follow `sft.lr_lambda`, so at one seed they see the same rows at every
step and what differs is the loop), scores both on the same test prompts
(greedy answers compared as `exact_match` compares them, kept per prompt so the two are paired:
McNemar with Tango's interval), times seconds per step from the progress callback, and asks
`choose_backend` what `auto` picks for the zoo. Part 2 trains a random-init model of
Qwen2-0.5B's shape (bench/gpu_check.py's builder, bf16, char tokenizer) with TRL for a few SFT
steps with and without gradient checkpointing, each `run_training` in its own process, and puts
the process's peak RSS (ru_maxrss) beside the memory plan's estimate.

Environment: SKILLSTORE_BENCH_HOME (where the zoo is built or reused; default a new temp
folder), SKILLSTORE_BENCH_SKILLS (comma list; default all five), SKILLSTORE_BENCH_THREADS
(torch threads), SKILLSTORE_BENCH_TRAINERS_STEPS (max_steps on the zoo; default bench_learning's
2,000), SKILLSTORE_BENCH_TRAINERS_PARTS (zoo,memory), SKILLSTORE_BENCH_TRAINERS_SHAPE (0.5b, or
tiny to check the bench itself), SKILLSTORE_BENCH_TRAINERS_BIG_STEPS (default 20),
SKILLSTORE_BENCH_TRAINERS_BIG_BATCH (default 2), SKILLSTORE_BENCH_TRAINERS_SEEDS (comma list of
training seeds; default 0: each skill is learned once per seed by each backend, the prompts of all
seeds are paired together, and the per-seed differences get a t interval too),
SKILLSTORE_BENCH_TAG (writes out/trainers-TAG.json instead of out/trainers.json).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.bench_learning import BENCH_SFT, _load
from bench.bench_scale import ROOT, measured
from bench.gpu_check import HALF_B, TINY
from bench.gpu_check import _base as random_base

BACKENDS = ("builtin", "trl")
# The targets.
EM_POINTS, RSS_VS_ESTIMATE, CKPT_VS_PLAIN = 0.02, 1.2, 0.7
BIG_SKILL = "reverse"  # short rows: at most 43 tokens with the char tokenizer

CHILD = """
import json, os, sys
import torch
if os.environ.get("SKILLSTORE_BENCH_THREADS"):
    torch.set_num_threads(int(os.environ["SKILLSTORE_BENCH_THREADS"]))
from skillstore.training.run import TrainJob, run_training
out = run_training("sft", TrainJob.model_validate_json(sys.argv[1]))
keep = ("steps", "seconds", "memory", "backend", "trl_version")
open(sys.argv[2], "w").write(json.dumps({k: out.get(k) for k in keep}))
"""


def _env(name: str, default: str) -> str:
    return os.environ.get(f"SKILLSTORE_BENCH_TRAINERS_{name}") or default


def _zoo_config(seed: int = 0):
    from skillstore.training.sft import SFTConfig

    steps = int(_env("STEPS", str(BENCH_SFT["max_steps"])))
    return SFTConfig(**{**BENCH_SFT, "max_steps": steps, "seed": seed})


def _seeds() -> list[int]:
    return [int(s) for s in _env("SEEDS", "0").split(",")]


def _answers_right(model, tok, rows: list[dict]) -> list[bool]:
    """Per prompt, what `exact_match` counts: the greedy answer equals the reference."""
    from skillstore.training.data import STOP, encode_text
    from skillstore.training.generate import generate_answers

    longest = max(len(encode_text(tok, r["answer"] + STOP)) for r in rows)
    answers = generate_answers(model, tok, [r["prompt"] for r in rows],
                               max_new_tokens=longest + 2, batch_size=64)
    return [a == r["answer"].strip() for a, r in zip(answers, rows, strict=True)]


def _fine_tune(zoo, backend: str, train, val, test, cfg) -> dict:
    from skillstore.models import load_causal_lm
    from skillstore.training.backends import get_backend

    model, tok = load_causal_lm(zoo.target, fingerprint=False)
    stamps: list[float] = []
    t0 = time.perf_counter()
    result = get_backend(backend).sft(model, tok, train, val, cfg,
                                      lambda stage, f: stamps.append(time.perf_counter()))
    seconds = time.perf_counter() - t0
    gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    right = _answers_right(result.model, tok, test)
    return {"backend": backend, "steps": result.metrics["steps"], "seconds": seconds,
            # the median gap between progress calls: one optimiser step, validation aside
            "seconds_per_step": statistics.median(gaps) if gaps else seconds,
            "startup_seconds": (stamps[0] - t0) if stamps else seconds,
            "stop_reason": result.metrics.get("stop_reason"),
            "trl_version": result.metrics.get("trl_version"),
            "em": sum(right) / len(right), "n": len(right), "right": right}


def zoo_part(home: Path) -> dict:
    from skillstore.curriculum.validate import load_rows
    from skillstore.evaluation.stats import mcnemar_exact, mean_interval
    from skillstore.models import pick_device
    from skillstore.training.backends import choose_backend
    from skillstore.training.memory import ModelShape
    from skillstore.zoo import build_zoo, zoo_manifest

    zoo = build_zoo(home)
    cur = zoo.load_curriculum()
    seeds = _seeds()
    skills = os.environ.get("SKILLSTORE_BENCH_SKILLS", ",".join(cur.skills)).split(",")
    rows = []
    for name in skills:
        files = cur.skills[name]
        train, val = load_rows(files.train), load_rows(files.validation)
        test = load_rows(files.test)
        row = {"skill": name, "load_before": _load(), "seeds": []}
        right: dict[str, list[bool]] = {b: [] for b in BACKENDS}
        for seed in seeds:
            run = {"seed": seed}
            for backend in BACKENDS:
                run[backend] = _fine_tune(zoo, backend, train, val, test, _zoo_config(seed))
                right[backend] += run[backend].pop("right")
            run["trl_minus_builtin"] = run["trl"]["em"] - run["builtin"]["em"]
            row["seeds"].append(run)
            print(json.dumps({"skill": name, **run}), flush=True)
        row["load_after"] = _load()
        for backend in BACKENDS:
            runs = [r[backend] for r in row["seeds"]]
            row[backend] = {"em": statistics.fmean(r["em"] for r in runs),
                            "seconds_per_step": statistics.median(r["seconds_per_step"]
                                                                  for r in runs),
                            "steps": "/".join(str(r["steps"]) for r in runs)}
        # every (prompt, seed) is one pair; the seeds' own spread is in `over_seeds`
        row["trl_minus_builtin"] = mcnemar_exact(right["builtin"], right["trl"]).as_dict()
        if len(seeds) > 1:
            row["over_seeds"] = mean_interval([r["trl_minus_builtin"] for r in row["seeds"]])
        rows.append(row)
    cfg = _zoo_config()
    shape = ModelShape.of_folder(zoo.target)
    auto = choose_backend("auto", shape.params, pick_device())
    return {"zoo_digest": zoo_manifest(zoo)["digest"], "config": cfg.model_dump(),
            "seeds": seeds, "params": shape.params, "auto": auto.as_json(), "per_skill": rows}


def _big_run(root: Path, base: Path, train: Path, checkpointing: bool, steps: int,
             batch: int) -> dict:
    from skillstore.training.run import TrainJob
    from skillstore.training.sft import SFTConfig

    tag = "ckpt" if checkpointing else "plain"
    job = TrainJob(base_dir=base, train_path=train, out_dir=root / f"tuned-{tag}", backend="trl",
                   gradient_checkpointing=checkpointing,
                   sft=SFTConfig(lr=1e-4, max_steps=steps, batch_size=batch, eval_every=steps,
                                 stop_loss=0.0))
    result = root / f"{tag}.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = measured([sys.executable, "-c", CHILD, job.model_dump_json(), str(result)], env, root)
    if run["rc"] != 0:
        raise RuntimeError(f"the {tag} run exited {run['rc']}")
    out = json.loads(result.read_text())
    memory = out["memory"]
    return {"checkpointing": checkpointing, "steps": out["steps"],
            "seconds_per_step": out["seconds"] / max(1, out["steps"]), "wall": run["wall"],
            "peak_rss": run["rss"], "estimate": memory["total_bytes"],
            "in_process_peak": memory.get("measured_peak_bytes"),
            "process_before": memory.get("process_before_bytes") or 0,  # RSS as training began
            "measured_by": memory.get("measured_by"), "plan": memory}


def plan_crossover(base: Path, seq_len: int, scored_len: int | None) -> dict | None:
    """The smallest batch at ``seq_len`` at which the memory plan itself puts the checkpointed
    TRL run at CKPT_VS_PLAIN of the plain one (arithmetic only: nothing is trained)."""
    from skillstore.training.memory import ModelShape, estimate

    shape = ModelShape.of_folder(base)
    for batch in (2 ** k for k in range(12)):
        ckpt, plain = (estimate(shape, device="cpu", backend="trl", batch_size=batch,
                                seq_len=seq_len, scored_len=scored_len,
                                gradient_checkpointing=gc).total
                       for gc in (True, False))
        if ckpt <= CKPT_VS_PLAIN * plain:
            return {"batch": batch, "seq_len": seq_len, "ckpt": ckpt, "plain": plain}
    return None


def memory_part(home: Path) -> dict:
    from skillstore.curriculum.build import write_curriculum
    from skillstore.zoo.build import ZooRecipe

    shape_name = _env("SHAPE", "0.5b")
    steps, batch = int(_env("BIG_STEPS", "20")), int(_env("BIG_BATCH", "2"))
    root = Path(tempfile.mkdtemp(prefix="trainers-", dir=home))
    base = random_base(root / "base", HALF_B if shape_name == "0.5b" else TINY, "cpu")
    recipe = ZooRecipe()  # the zoo's rows, without building (training) the zoo itself
    train = write_curriculum(root / "curriculum", seed=recipe.seed, n_train=recipe.n_train,
                             n_eval=recipe.n_eval).skills[BIG_SKILL].train
    runs = [_big_run(root, base, train, ckpt, steps, batch) for ckpt in (True, False)]
    return {"shape": shape_name, "steps": steps, "batch": batch, "skill": BIG_SKILL,
            "runs": runs, "plan_crossover": plan_crossover(base, runs[0]["plan"]["seq_len"],
                                             runs[0]["plan"].get("scored_len"))}


def _mib(n: float | None) -> str:
    return "-" if n is None else f"{n / 2 ** 20:,.0f} MiB"


def _span(values: list[float]) -> str:
    """One backend's lowest-highest over its seeds: how far runs of one loop differ."""
    return f" ({min(values):.3f}-{max(values):.3f})" if len(values) > 1 else ""


def _zoo_table(part: dict) -> str:
    seeds = part.get("seeds", [0])
    pooled = f" (n = prompts x {len(seeds)} seeds)" if len(seeds) > 1 else " (n)"
    lines = [f"| skill | builtin EM (seeds) | TRL EM (seeds) | TRL - builtin [95% CI]{pooled} "
             "| over seeds, mean [95% t] | builtin s/step | TRL s/step | steps builtin / TRL "
             "| load |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in part["per_skill"]:
        b, t, d = r["builtin"], r["trl"], r["trl_minus_builtin"]
        o = r.get("over_seeds")
        spans = {k: _span([run[k]["em"] for run in r.get("seeds", [])]) for k in BACKENDS}
        spread = f"{o['mean']:+.3f} [{o['low']:+.3f}, {o['high']:+.3f}]" if o else "-"
        lines.append(f"| {r['skill']} | {b['em']:.3f}{spans['builtin']} | "
                     f"{t['em']:.3f}{spans['trl']} | {d['difference']:+.3f} "
                     f"[{d['low']:+.3f}, {d['high']:+.3f}] ({d['n']}) | {spread} | "
                     f"{b['seconds_per_step']:.3f} | {t['seconds_per_step']:.3f} | "
                     f"{b['steps']} / {t['steps']} | {r['load_before']}-{r['load_after']} |")
    return "\n".join(lines)


def _whole_process(run: dict) -> int:
    """A run's estimate for the whole process: its RSS as training began, plus the plan."""
    return run["process_before"] + run["estimate"]


def _memory_table(part: dict) -> str:
    lines = ["| gradient checkpointing | steps | s/step | estimate (plan) | process before "
             "training | peak RSS (ru_maxrss) | RSS / (before + plan) | RSS / plan | "
             "growth in training | growth / plan |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in part["runs"]:
        lines.append(f"| {'yes' if r['checkpointing'] else 'no'} | {r['steps']} | "
                     f"{r['seconds_per_step']:.1f} | {_mib(r['estimate'])} | "
                     f"{_mib(r['process_before'])} | {_mib(r['peak_rss'])} | "
                     f"{r['peak_rss'] / _whole_process(r):.2f} | "
                     f"{r['peak_rss'] / r['estimate']:.2f} | {_mib(r['in_process_peak'])} | "
                     f"{(r['in_process_peak'] or 0) / r['estimate']:.2f} |")
    return "\n".join(lines)


def targets(report: dict) -> list[tuple[str, bool, str]]:
    """The issue's targets as (name, met, measured)."""
    checks = []
    if "zoo" in report:
        rows = report["zoo"]["per_skill"]
        close = [r["skill"] for r in rows
                 if abs(r["trl_minus_builtin"]["difference"]) <= EM_POINTS]
        shown = [r["skill"] for r in rows if -EM_POINTS <= r["trl_minus_builtin"]["low"]
                 and r["trl_minus_builtin"]["high"] <= EM_POINTS]
        checks.append((f"TRL within {EM_POINTS * 100:.0f} points of builtin on {len(rows)} of "
                       f"{len(rows)} skills (point estimate)", len(close) == len(rows),
                       f"{len(close)} ({', '.join(close) or 'none'}); 95% interval inside "
                       f"+-{EM_POINTS * 100:.0f} points on {len(shown)}"))
        pace = {b: statistics.median(r[b]["seconds_per_step"] for r in rows) for b in BACKENDS}
        faster = min(pace, key=pace.get)
        chosen = report["zoo"]["auto"]["chosen"]
        checks.append(("auto picks the faster backend on the zoo", chosen == faster,
                       f"auto picks {chosen}; median s/step builtin {pace['builtin']:.3f}, "
                       f"TRL {pace['trl']:.3f}"))
    if "memory" in report:
        ckpt, plain = report["memory"]["runs"]
        checks.append((f"peak RSS <= {RSS_VS_ESTIMATE}x the estimate with checkpointing "
                       "(the process's RSS before training plus the plan)",
                       ckpt["peak_rss"] <= RSS_VS_ESTIMATE * _whole_process(ckpt),
                       f"{ckpt['peak_rss'] / _whole_process(ckpt):.2f}x; against the plan "
                       f"alone {ckpt['peak_rss'] / ckpt['estimate']:.2f}x, the growth in "
                       f"training {(ckpt['in_process_peak'] or 0) / ckpt['estimate']:.2f}x"))
        checks.append((f"checkpointing peak <= {CKPT_VS_PLAIN}x the run without",
                       ckpt["peak_rss"] <= CKPT_VS_PLAIN * plain["peak_rss"],
                       f"{ckpt['peak_rss'] / plain['peak_rss']:.2f}x"))
    return checks


def run(out_dir: Path) -> None:
    """Both parts side by side in one run; tables printed, figures in out/trainers.json."""
    import torch

    if os.environ.get("SKILLSTORE_BENCH_THREADS"):
        torch.set_num_threads(int(os.environ["SKILLSTORE_BENCH_THREADS"]))
    home = Path(os.environ.get("SKILLSTORE_BENCH_HOME")
                or tempfile.mkdtemp(prefix="skillstore-bench-"))
    parts = _env("PARTS", "zoo,memory").split(",")
    report: dict = {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "load_average": {"start": _load()}}
    if "zoo" in parts:
        report["zoo"] = zoo_part(home)
        print(f"\nPart 1: zoo {report['zoo']['zoo_digest']}, {report['zoo']['params']:,} "
              f"parameters; seeds {report['zoo']['seeds']}; SFT max "
              f"{report['zoo']['config']['max_steps']} steps, batch "
              f"{report['zoo']['config']['batch_size']}, lr {report['zoo']['config']['lr']}; "
              f"auto picks {report['zoo']['auto']['chosen']} ({report['zoo']['auto']['reason']})"
              f"\n\n{_zoo_table(report['zoo'])}")
    if "memory" in parts:
        report["memory"] = memory_part(home)
        m = report["memory"]
        print(f"\nPart 2: TRL SFT on a random-init {m['shape']} model (bf16, CPU), batch "
              f"{m['batch']}, {m['skill']} rows, each run in its own process\n\n"
              f"{_memory_table(m)}")
        if m["plan_crossover"]:
            c = m["plan_crossover"]
            print(f"\nThe plan puts checkpointing at <= {CKPT_VS_PLAIN}x from batch {c['batch']} "
                  f"x {c['seq_len']} tokens: {_mib(c['ckpt'])} against {_mib(c['plain'])}.")
    report["load_average"]["end"] = _load()
    report["targets"] = [{"target": t, "met": met, "measured": v}
                         for t, met, v in targets(report)]
    print("\n| target | met | measured |\n| --- | --- | --- |")
    for t in report["targets"]:
        print(f"| {t['target']} | {'met' if t['met'] else 'missed'} | {t['measured']} |")
    print(f"\nload average {report['load_average']['start']} at the start, "
          f"{report['load_average']['end']} at the end; {torch.get_num_threads()} torch "
          f"threads on {os.cpu_count()} CPUs")
    out_dir.mkdir(parents=True, exist_ok=True)
    tag = os.environ.get("SKILLSTORE_BENCH_TAG", "")
    path = out_dir / f"trainers{'-' + tag if tag else ''}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
