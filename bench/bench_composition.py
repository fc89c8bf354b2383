"""Composition benchmark: routed SkillPack state vs naive sequential fine-tuning on the tiny
curriculum, and the cost of routed inference against the plain base."""

from __future__ import annotations

import copy
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from skillstore.evaluation.metrics import continual_metrics
from skillstore.packs import compress_checkpoint, read_pack
from skillstore.routing import NONE_CLASS, DeltaBank, PackDeltas, RoutedModel, train_router
from skillstore.states.materialise import grafted_all
from skillstore.training.baselines import Stage, train_sequential
from skillstore.training.generate import exact_match
from skillstore.training.sft import SFTConfig, train_sft

# Small enough for 2 CPU cores; SKILLSTORE_BENCH_FULL=1 trains and evaluates with the zoo's
# defaults.
FULL = os.environ.get("SKILLSTORE_BENCH_FULL", "") == "1"
STEPS = int(os.environ.get("SKILLSTORE_BENCH_STEPS", "600" if FULL else "120"))
SFT = SFTConfig(lr=3e-3, max_steps=STEPS, batch_size=32, eval_every=50)
EVAL_LIMIT = int(os.environ.get("SKILLSTORE_BENCH_EVAL_LIMIT", "0" if FULL else "40")) or None


def _log(message: str) -> None:
    print(f"[composition {time.strftime('%H:%M:%S')}] {message}", flush=True)
POLICY = "balanced"


def _stages(curriculum) -> list[Stage]:
    from skillstore.curriculum.validate import load_rows

    return [Stage(name, load_rows(f.train), load_rows(f.validation), load_rows(f.test))
            for name, f in curriculum.skills.items()]


def _row(model, tok, stages, general) -> tuple[list[float], float]:
    scores = [exact_match(model, tok, s.test, limit=EVAL_LIMIT).accuracy for s in stages]
    return scores, exact_match(model, tok, general, limit=EVAL_LIMIT).accuracy


def _packs(base_dir: Path, base, tok, stages, work: Path) -> tuple[list, dict]:
    """One SFT run per skill from the base, compressed into a pack."""
    packs, info = [], {}
    for stage in stages:
        _log(f"SFT {stage.name} from the base")
        model = copy.deepcopy(base)
        train_sft(model, tok, stage.train, stage.validation, SFT)
        tuned = work / f"tuned-{stage.name}"
        model.save_pretrained(tuned, safe_serialization=True)
        tok.save_pretrained(tuned)
        summary = compress_checkpoint(base_dir, tuned, POLICY, work / f"{stage.name}.safetensors")
        packs.append(read_pack(summary.path))
        info[stage.name] = {"bytes": summary.bytes, "dense_fp16_bytes": summary.dense_fp16_bytes,
                            "rel_error": summary.rel_error}
        del model
    return packs, info


def _routed_matrix(base, tok, stages, general, packs
                   ) -> tuple[list[list[float]], list[float], list[float]]:
    matrix, general_row, accuracy = [], [], []
    for i in range(len(stages)):
        _log(f"routed state after {stages[i].name}")
        learned = stages[: i + 1]
        prompts = {s.name: [r["prompt"] for r in s.train[:400]] for s in learned}
        prompts[NONE_CLASS] = [r["prompt"] for r in general[:400]]
        clf = train_router(base, tok, prompts).classifier
        deltas = [PackDeltas(s.name, {p.name: p for p in pk.decoded()})
                  for s, pk in zip(learned, packs, strict=False)]
        with RoutedModel(base, DeltaBank(base, deltas), "learned", classifier=clf,
                         pad_token_id=tok.pad_token_id):
            row, gen = _row(base, tok, stages, general)
        matrix.append(row)
        general_row.append(gen)
        test = [(s.name, r["prompt"]) for s in learned for r in s.test[:100]]
        from skillstore.routing.learned import prompt_features

        pred = clf.predict(prompt_features(base, tok, [p for _, p in test]))
        accuracy.append(sum(a == b for a, (b, _) in zip(pred, test, strict=True)) / len(test))
    return matrix, general_row, accuracy


def _overhead(base, tok, stages, general, packs) -> dict:
    prompts = [r for s in stages for r in s.test[:40]] + general[:40]
    clf = train_router(base, tok, {s.name: [r["prompt"] for r in s.train[:200]] for s in stages}
                       | {NONE_CLASS: [r["prompt"] for r in general[:200]]}).classifier

    def timed(fn) -> float:
        best = float("inf")
        for _ in range(2):
            start = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - start)
        return best

    base_s = timed(lambda: exact_match(base, tok, prompts))
    with grafted_all(base, packs, [1.0] * len(packs)):
        graft_s = timed(lambda: exact_match(base, tok, prompts))
    deltas = [PackDeltas(s.name, {p.name: p for p in pk.decoded()})
              for s, pk in zip(stages, packs, strict=True)]
    with RoutedModel(base, DeltaBank(base, deltas), "learned", classifier=clf,
                     pad_token_id=tok.pad_token_id):
        routed_s = timed(lambda: exact_match(base, tok, prompts))
    n = len(prompts)
    return {"prompts": n, "base_ms_per_prompt": 1e3 * base_s / n,
            "grafted_sum_ms_per_prompt": 1e3 * graft_s / n,
            "routed_learned_ms_per_prompt": 1e3 * routed_s / n,
            "routed_over_base": routed_s / base_s, "grafted_over_base": graft_s / base_s}


def _fmt(v) -> str:
    return "—" if v is None else f"{v:+.3f}" if isinstance(v, float) and v < 0 else f"{v:.3f}"


def markdown(result: dict) -> str:
    skills = result["skills"]
    lines = ["### Accuracy matrix R[i][j] (exact match; row = after learning skill i)", ""]
    for name in ("routed_skillpacks", "sequential_ft"):
        run = result[name]
        lines += [f"**{name}**", "", "| after | " + " | ".join(skills) + " | general |",
                  "|---" * (len(skills) + 2) + "|"]
        for i, row in enumerate(run["accuracy_matrix"]):
            gen = run["general"][i]
            lines.append(f"| {skills[i]} | " + " | ".join(f"{v:.2f}" for v in row)
                         + f" | {'—' if gen is None else f'{gen:.2f}'} |")
        lines.append("")
    lines += ["| run | average accuracy | BWT | forgetting | FWT |", "|---|---|---|---|---|"]
    for name in ("routed_skillpacks", "sequential_ft"):
        m = result[name]["metrics"]
        lines.append(f"| {name} | {_fmt(m['average_accuracy'])} | {_fmt(m['bwt'])} | "
                     f"{_fmt(m['forgetting'])} | {_fmt(m['forward_transfer'])} |")
    o = result["overhead"]
    per_stage = ", ".join(f"{a:.3f}" for a in result["router_accuracy"])
    lines += ["", f"Router accuracy per stage: {per_stage}", "",
              "| inference | ms / prompt | x base |", "|---|---|---|",
              f"| base | {o['base_ms_per_prompt']:.2f} | 1.00 |",
              f"| grafted sum of {len(skills)} packs (router none) | "
              f"{o['grafted_sum_ms_per_prompt']:.2f} | {o['grafted_over_base']:.2f} |",
              f"| learned routing over {len(skills)} packs (hooks) | "
              f"{o['routed_learned_ms_per_prompt']:.2f} | {o['routed_over_base']:.2f} |"]
    return "\n".join(lines) + "\n"


def _setup():
    from skillstore.curriculum.validate import load_rows
    from skillstore.models import load_causal_lm
    from skillstore.zoo import build_zoo

    zoo = build_zoo()  # the workspace cache, shared with the other benchmarks
    cur = zoo.load_curriculum()
    base, tok = load_causal_lm(zoo.target, dtype=torch.float32, device="cpu")
    return base, tok, _stages(cur), load_rows(cur.general.test)


def routed_part() -> dict:
    """Packs from the base, the learned router per stage, and the routing overhead."""
    base, tok, stages, general = _setup()
    base_row, base_general = _row(base, tok, stages, general)
    with tempfile.TemporaryDirectory() as tmp:
        packs, pack_info = _packs(zoo_target(), base, tok, stages, Path(tmp))
        routed, routed_general, router_acc = _routed_matrix(base, tok, stages, general, packs)
        _log("routing overhead")
        overhead = _overhead(base, tok, stages, general, packs)
    return {"skills": [s.name for s in stages], "base_scores": base_row,
            "base_general": base_general, "packs": pack_info, "router_accuracy": router_acc,
            "overhead": overhead,
            "routed_skillpacks": {"accuracy_matrix": routed, "general": routed_general,
                                  "metrics": continual_metrics(routed, base_row).as_dict()}}


def sequential_part() -> dict:
    """Naive sequential full fine-tuning; the general score is measured on the final model."""
    base, tok, stages, general = _setup()
    _log("naive sequential fine-tuning")
    _, seq = train_sequential(base, tok, stages, SFT, eval_limit=EVAL_LIMIT)
    final_general = exact_match(base, tok, general, limit=EVAL_LIMIT).accuracy
    seq_general = [None] * (len(stages) - 1) + [final_general]
    return {"sequential_ft": {"accuracy_matrix": seq, "general": seq_general}}


def zoo_target() -> Path:
    from skillstore.zoo import build_zoo

    return build_zoo().target


def run(out_dir: Path) -> None:
    """Train the tiny curriculum both ways, print the Markdown tables, write composition.{json,md}.

    SKILLSTORE_BENCH_PART=routed|sequential runs one half (two processes finish sooner on a
    busy machine) and =merge combines the halves already written.
    """
    torch.set_num_threads(int(os.environ.get("SKILLSTORE_BENCH_THREADS",
                                             min(2, os.cpu_count() or 1))))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    part = os.environ.get("SKILLSTORE_BENCH_PART", "all")
    started = time.perf_counter()
    halves = {"routed": routed_part, "sequential": sequential_part}
    if part in halves:
        doc = halves[part]() | {"seconds": time.perf_counter() - started}
        (out / f"composition.{part}.json").write_text(json.dumps(doc, indent=2) + "\n")
        return
    if part == "merge":
        result = {}
        for name in halves:
            result |= json.loads((out / f"composition.{name}.json").read_text())
    else:
        result = routed_part() | sequential_part()
    seq = result["sequential_ft"]
    seq["metrics"] = continual_metrics(seq["accuracy_matrix"], result["base_scores"]).as_dict()
    result |= {"sft": SFT.model_dump(), "eval_limit": EVAL_LIMIT, "policy": POLICY}
    text = markdown(result)
    print(text)
    (out / "composition.md").write_text(text)
    (out / "composition.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
