"""SkillPack benchmark: bytes, error, accuracy, compress and apply time per codec and policy."""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from pathlib import Path

import torch

from skillstore.packs import (
    CodecSpec,
    CompressionPolicy,
    apply_pack,
    compress_checkpoint,
    grafted,
    load_policy,
    read_pack,
    release_buffers,
    unapply_pack,
)
from skillstore.packs.delta import checkpoint_index
from skillstore.packs.export import load_base

# ~110M parameters: Llama layout, untied head.
BIG = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
       "num_key_value_heads": 12, "intermediate_size": 2048, "vocab_size": 16000}
TINY_SKILL = "knowledge"


def _baseline(name: str, codec: str, **params) -> CompressionPolicy:
    spec = CodecSpec(codec=codec, params=params)
    return CompressionPolicy(name=name, embedding=spec, attention=spec, mlp=spec, unknown=spec)


def _shapes(base: Path) -> tuple[int, list[tuple[int, ...]]]:
    small, mats = 0, []
    for info in checkpoint_index(base).values():
        if len(info.shape) == 2:
            mats.append(info.shape)
        else:
            small += 2 * math.prod(info.shape)
    return small, mats


def policies(base: Path, target_bytes: int, bitdelta_ratio: float) -> list[CompressionPolicy]:
    """The baselines at the compact preset's bytes, the presets, and the budget mode."""
    small, mats = _shapes(base)
    rank = max(1, int((target_bytes - small) / sum(2 * (m + n) for m, n in mats)))
    entries = sum(m * n for m, n in mats)
    keep = min(1.0, (target_bytes - small) / (entries * (2 + 22 / 8)))
    return [
        _baseline("dense fp16", "dense"),
        _baseline("BitDelta", "bitdelta"),
        _baseline(f"low-rank r={rank} (=bytes)", "lowrank", rank=rank),
        _baseline(f"DARE keep={keep:.4f} (=bytes)", "dare", drop=1 - keep),
        load_policy("balanced"),
        load_policy("compact"),
        load_policy("compact", budget=0.05).model_copy(update={"name": "budget 5%"}),
        load_policy("compact", budget=bitdelta_ratio).model_copy(
            update={"name": f"budget {100 * bitdelta_ratio:.2f}% (=BitDelta bytes)"}),
    ]


def ablations() -> list[CompressionPolicy]:
    """Where accuracy goes: compact's operator on one role, every other role lossless."""
    lossless, compact = load_policy("lossless"), load_policy("compact")
    return [lossless.model_copy(update={role: compact.spec_for(role),
                                        "name": f"ablation: only {role} compact"})
            for role in ("embedding", "attention", "mlp")]


def _measure(base: Path, tuned: Path, policy, out: Path, evaluate=None, **kw) -> dict:
    stem = policy.name.split()[0].replace("%", "")
    path = out / f"{stem}-{abs(hash(policy.name)) % 10**6}.safetensors"
    s = compress_checkpoint(base, tuned, policy, path, **kw)
    row = {"policy": policy.name, "bytes": s.bytes, "ratio": s.ratio, "rel_error": s.rel_error,
           "payload_ratio": s.payload_bytes / s.dense_fp16_bytes,
           "compress_s": s.seconds, "codecs": s.codecs_by_role, "path": str(path)}
    if evaluate:
        row["accuracy"] = evaluate(path)
    return row


# ---- tiny pair: the zoo's target fine-tuned on one curriculum skill -------------------------

def _tiny_tuned(zoo, cur, skill: str, out: Path, cfg=None, kind: str = "tiny") -> Path:
    """The zoo target fine-tuned on one skill, cached per zoo recipe (a retuned zoo retrains)."""
    from skillstore.curriculum.validate import load_rows
    from skillstore.models import load_causal_lm
    from skillstore.training.sft import SFTConfig, train_sft

    files = cur.skills[skill]
    tuned_dir = out / f"{kind}-tuned-{skill}-{zoo.root.name}"
    if not (tuned_dir / "config.json").is_file():
        model, tok = load_causal_lm(zoo.target)
        train_sft(model, tok, load_rows(files.train), load_rows(files.validation),
                  cfg or SFTConfig(lr=3e-3, max_steps=400, batch_size=32, eval_every=100))
        model.save_pretrained(str(tuned_dir))
        tok.save_pretrained(str(tuned_dir))
    return tuned_dir


def tiny_pair(out: Path) -> dict:
    from skillstore.curriculum.validate import load_rows
    from skillstore.models import load_causal_lm
    from skillstore.packs.calibration import skill_calibration
    from skillstore.training.generate import exact_match
    from skillstore.zoo.build import build_zoo

    zoo = build_zoo()  # the workspace zoo (SKILLSTORE_HOME), shared with `skillstore zoo build`
    cur = zoo.load_curriculum()
    files = cur.skills[TINY_SKILL]
    train, test = load_rows(files.train), load_rows(files.test)
    tuned_dir = _tiny_tuned(zoo, cur, TINY_SKILL, out)
    base_model, tok = load_causal_lm(zoo.target)
    tuned_model, _ = load_causal_lm(tuned_dir, fingerprint=False)
    test = test[:200]
    acc_tuned = exact_match(tuned_model, tok, test).accuracy
    acc_base = exact_match(base_model, tok, test).accuracy

    def evaluate(path: Path) -> float:
        with grafted(base_model, path):
            return exact_match(base_model, tok, test).accuracy

    packs = out / "tiny-packs"
    packs.mkdir(exist_ok=True)
    compact = _measure(zoo.target, tuned_dir, load_policy("compact"), packs, evaluate)
    bitdelta_ratio = 1 / 16
    rows = [compact if p.name == "compact" else _measure(zoo.target, tuned_dir, p, packs, evaluate)
            for p in policies(zoo.target, compact["bytes"], bitdelta_ratio)]
    hess = skill_calibration(base_model, tok, train)  # as the job's compress step collects
    for label, gptq in (("compact + calibration (RTN codes)", False), ("compact + GPTQ", True)):
        rows.append(_measure(zoo.target, tuned_dir, load_policy("compact").model_copy(
            update={"name": label, "gptq": gptq}), packs, evaluate, calibration=hess))
    for budget in (0.05, 0.10, 0.20, 0.35):  # accuracy against bytes, output-error allocation
        policy = load_policy("compact", budget=budget).model_copy(
            update={"name": f"budget {100 * budget:.0f}% + calibration"})
        rows.append(_measure(zoo.target, tuned_dir, policy, packs, evaluate, calibration=hess))
    rows += [_measure(zoo.target, tuned_dir, p, packs, evaluate) for p in ablations()]
    for r in rows:
        r["normalised_accuracy"] = r["accuracy"] / max(acc_tuned, 1e-9)
    return {"pair": f"zoo target + SFT on '{TINY_SKILL}'", "base_accuracy": acc_base,
            "tuned_accuracy": acc_tuned, "rows": rows}


def tiny_skills(out: Path) -> dict:
    """The compact preset on every curriculum skill's fine-tune, not only TINY_SKILL's.

    Each skill is trained at the learning bench's rate (batch 128, lr 2e-3) for up to 2,000
    steps, so sort and add are learned (400 steps at batch 32 leave add at 0.05, which makes
    a normalised accuracy meaningless)."""
    from skillstore.curriculum.validate import load_rows
    from skillstore.models import load_causal_lm
    from skillstore.packs import TuneConfig, tune_pack
    from skillstore.training.generate import exact_match
    from skillstore.training.sft import SFTConfig
    from skillstore.zoo.build import build_zoo

    from .bench_learning import BENCH_SFT

    zoo = build_zoo()
    cur = zoo.load_curriculum()
    base_model, tok = load_causal_lm(zoo.target)
    packs = out / "tiny-packs"
    packs.mkdir(exist_ok=True)
    rows = []
    for skill, files in cur.skills.items():
        tuned_dir = _tiny_tuned(zoo, cur, skill, out, SFTConfig(**BENCH_SFT), kind="skill")
        test = load_rows(files.test)[:200]
        tuned_model, _ = load_causal_lm(tuned_dir, fingerprint=False)
        acc_tuned = exact_match(tuned_model, tok, test).accuracy
        s = compress_checkpoint(zoo.target, tuned_dir, load_policy("compact"),
                                packs / f"compact-{skill}.safetensors")
        # then the same pack with its float payload tuned on the skill's training rows
        healed = tune_pack(s.path, base_model, tok, load_rows(files.train),
                           packs / f"compact-tuned-{skill}.safetensors", TuneConfig())
        accs = []
        for path in (s.path, healed.path):
            with grafted(base_model, path):
                accs.append(exact_match(base_model, tok, test).accuracy)
        rows.append({"skill": skill, "n_test": len(test),
                     "base_accuracy": exact_match(base_model, tok, test).accuracy,
                     "tuned_accuracy": acc_tuned, "compact_accuracy": accs[0], "bytes": s.bytes,
                     "ratio": s.ratio, "rel_error": s.rel_error,
                     "normalised_accuracy": accs[0] / max(acc_tuned, 1e-9),
                     "healed_accuracy": accs[1], "healed_bytes": healed.bytes,
                     "healed_ratio": healed.bytes / s.dense_fp16_bytes,
                     "heal_seconds": healed.seconds,
                     "healed_normalised_accuracy": accs[1] / max(acc_tuned, 1e-9)})
    return {"pair": "zoo target + SFT on each skill, compact preset", "skills": rows}


def greedy_answers(model, tok, rows) -> list[str]:
    """The greedy answer to each prompt, with room for the longest reference answer."""
    from skillstore.training.data import STOP, encode_text
    from skillstore.training.generate import generate_answers

    longest = max(len(encode_text(tok, r["answer"] + STOP)) for r in rows)
    return generate_answers(model, tok, [r["prompt"] for r in rows],
                            max_new_tokens=longest + 2, batch_size=64)


def _per_prompt(model, tok, rows) -> list[int]:
    """1/0 per prompt: greedy answer equal to the reference, as exact_match scores it."""
    answers = greedy_answers(model, tok, rows)
    return [int(a == r["answer"].strip()) for a, r in zip(answers, rows, strict=True)]


GPTQ_ROWS = (("compact (RTN)", False, False), ("compact + calibration, RTN codes", True, False),
             ("compact + GPTQ", True, True))


def gptq_skills(out: Path, sft: str | None = None, skills: list[str] | None = None) -> dict:
    """Compact with round-to-nearest codes against compact with GPTQ's codes, per curriculum
    skill, scored per prompt (``gptq_skill``). The fine-tunes are ``tiny_pair``'s 400-step
    ones (the 2,000-step ones of ``tiny_skills`` take 5x longer than a 2-core bench affords),
    or with ``sft="demo"`` (env ``SKILLSTORE_BENCH_GPTQ_SFT``) the demo's 600-step ones, the
    same that ``bench tune`` caches. ``skills`` (env ``SKILLSTORE_BENCH_GPTQ_SKILLS``, comma
    separated) picks some of the curriculum's."""
    from skillstore.experiments.spec import load_spec
    from skillstore.models import load_causal_lm
    from skillstore.zoo.build import build_zoo

    sft = sft or os.environ.get("SKILLSTORE_BENCH_GPTQ_SFT", "tiny")
    skills = skills or [s for s in os.environ.get("SKILLSTORE_BENCH_GPTQ_SKILLS", "").split(",")
                        if s]
    zoo = build_zoo()
    cur = zoo.load_curriculum()
    base_model, tok = load_causal_lm(zoo.target)
    tuned = {"tiny": lambda s: _tiny_tuned(zoo, cur, s, out),
             "demo": lambda s: _tiny_tuned(zoo, cur, s, out, load_spec("demo").train,
                                           kind="tune-demo")}[sft]
    made = [gptq_skill(zoo, cur, skill, base_model, tok, out, tuned(skill))
            for skill in skills or cur.skills]
    met = sum(s["gptq_vs_rtn"]["difference"] >= 0 for s in made)
    steps = "600 steps, batch 32 (the demo's)" if sft == "demo" else "400 steps, batch 32"
    return {"pair": f"zoo target + SFT ({steps}) on each skill; compact RTN vs GPTQ",
            "gptq": made, "met": f"{met}/{len(made)}"}


def gptq_skill(zoo, cur, skill: str, base_model, tok, out: Path,
               tuned_dir: Path | None = None) -> dict:
    """One skill's fine-tune (cached) as three compact packs, each scored per prompt on the
    first 200 test prompts. GPTQ's statistics come from the skill's first 64 training rows
    through the base (``skill_calibration``, as the job's compress step collects them). The
    middle pack has GPTQ's allocation (by output error on those inputs) with RTN codes: the
    same bytes exactly, so it isolates the codes from the allocation."""
    from skillstore.curriculum.validate import load_rows
    from skillstore.evaluation.stats import mcnemar_exact, wilson_interval
    from skillstore.models import load_causal_lm
    from skillstore.packs.calibration import skill_calibration

    files = cur.skills[skill]
    packs = out / "gptq-packs"
    packs.mkdir(exist_ok=True)
    tuned_dir = tuned_dir or _tiny_tuned(zoo, cur, skill, out)
    test = load_rows(files.test)[:200]
    tuned_model, _ = load_causal_lm(tuned_dir, fingerprint=False)
    hess = skill_calibration(base_model, tok, load_rows(files.train))
    res = {"skill": skill, "n_test": len(test), "calibration_tokens": hess.tokens,
           "tuned": _per_prompt(tuned_model, tok, test), "rows": []}
    for label, calibrated, gptq in GPTQ_ROWS:
        policy = load_policy("compact").model_copy(update={"gptq": gptq})
        s = compress_checkpoint(zoo.target, tuned_dir, policy,
                                packs / f"{skill}-{int(calibrated)}{int(gptq)}.safetensors",
                                calibration=hess if calibrated else None)
        with grafted(base_model, s.path):
            scores = _per_prompt(base_model, tok, test)
        ci = wilson_interval(sum(scores), len(scores))
        res["rows"].append({"policy": label, "bytes": s.bytes, "payload": s.payload_bytes,
                            "rel_error": s.rel_error, "gptq_matrices": s.gptq_matrices,
                            "accuracy": sum(scores) / len(scores), "ci": [ci.low, ci.high],
                            "scores": scores})
    rtn, cal, gq = (r["scores"] for r in res["rows"])
    for key, before in (("gptq_vs_rtn", rtn), ("gptq_vs_calibrated_rtn", cal)):
        t = mcnemar_exact(before, gq)
        res[key] = {"difference": t.difference, "ci": [t.low, t.high], "p": t.p_value,
                    "b": t.b, "c": t.c}
    return res


# ---- ~100M synthetic Llama pair -------------------------------------------------------------

def make_synthetic_pair(root: Path, cfg: dict = BIG, seed: int = 0) -> tuple[Path, Path]:
    """Base at random init; tuned = base + (rank-16 + 10%-energy noise) per matrix at 2% of
    the weight's norm, 300 changed token rows in embedding and head, small norm changes."""
    from transformers import LlamaConfig, LlamaForCausalLM

    base_dir, tuned_dir = root / "base", root / "tuned"
    if (tuned_dir / "config.json").is_file():
        return base_dir, tuned_dir
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(max_position_embeddings=256, tie_word_embeddings=False,
                                         **cfg))
    model.save_pretrained(str(base_dir))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "embed_tokens" in name or "lm_head" in name:
                rows = torch.randperm(p.shape[0], generator=g)[:300]
                p[rows] += 0.05 * p[rows].norm(dim=1, keepdim=True) / math.sqrt(p.shape[1]) * \
                    torch.randn(300, p.shape[1], generator=g)
            elif p.dim() == 2:
                m, n = p.shape
                low = torch.randn(m, 16, generator=g) @ torch.randn(16, n, generator=g)
                noise = torch.randn(m, n, generator=g)
                delta = low / low.norm() + math.sqrt(0.1 / 0.9) * noise / noise.norm()
                p += 0.02 * p.norm() * delta / delta.norm()
            else:
                p += 0.01 * torch.randn(p.shape, generator=g)
    model.save_pretrained(str(tuned_dir))
    return base_dir, tuned_dir


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _load_full(tuned: Path) -> None:
    """What a user without packs does: load the fine-tuned checkpoint and touch every weight
    (from_pretrained may map the file lazily; the touch makes it pay for the pages)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tuned))
    with torch.no_grad():
        for p in model.parameters():
            p.sum()


REPEATS = 3
MODES = ("merge", "hooks")
# "inplace": apply_pack(removable=False), the merge export_merged and `pack apply` run
APPLY_MODES = (*MODES, "inplace")


def _restore(model, base: dict[str, torch.Tensor]) -> None:
    """Put the base weights back after a pack merged for good (untimed), and drop its record."""
    from skillstore.packs.graft import STATE_ATTR

    with torch.no_grad():
        for name, p in model.named_parameters():
            p.data.copy_(base[name])
    getattr(model, STATE_ATTR).active.pop()


def apply_vs_load(model, pack: Path, tuned: Path, repeats: int = REPEATS,
                  modes: tuple[str, ...] = APPLY_MODES) -> dict:
    """Medians of ``repeats`` warm-cache runs of each, interleaved in one process: apply
    (read + verify + decode + graft) on the loaded base in each of ``modes``, and
    ``from_pretrained`` of the fine-tuned folder. One run of each warms the caches first;
    the first merged apply (no spare storage from an unapply yet) is reported on its own.
    Keys without a mode prefix are the exact merged apply's (exact unapply kept);
    ``hooks_`` ones the hooked apply's (weights untouched, the delta added to module
    outputs); ``inplace_`` ones the merge for good (``removable=False``: added in place,
    nothing kept; the base weights are copied back untimed after each run)."""
    runs: dict[str, list[float]] = {m: [] for m in modes}
    load_s = []
    release_buffers(model)
    base = {n: p.detach().clone() for n, p in model.named_parameters()} \
        if "inplace" in modes else {}
    for _ in range(repeats + 1):
        for mode in modes:
            if mode == "inplace":
                runs[mode].append(_timed(lambda: apply_pack(model, read_pack(pack),
                                                            removable=False)))
                _restore(model, base)
                continue
            runs[mode].append(_timed(lambda m=mode: apply_pack(model, read_pack(pack), mode=m)))
            unapply_pack(model, pack)
        load_s.append(_timed(lambda: _load_full(tuned)))
    first = {m: r.pop(0) for m, r in runs.items()}  # merged: no spare storage yet, it pays
    load_s.pop(0)                                    # a page fault per 4 KB it writes
    release_buffers(model)
    load_m = statistics.median(load_s)
    out = {"load_full_s": load_m, "load_runs_s": load_s}
    for mode, r in runs.items():
        pre = "" if mode == "merge" else f"{mode}_"
        out.update({f"{pre}apply_s": statistics.median(r), f"{pre}first_apply_s": first[mode],
                    f"{pre}load_over_apply": load_m / statistics.median(r),
                    f"{pre}apply_runs_s": r})
    return out


def forward_cost(model, pack: Path, tokens: int = 128, repeats: int = REPEATS) -> dict:
    """Median time of one forward pass (1 x ``tokens``) with the pack merged and hooked."""
    ids = torch.randint(0, model.config.vocab_size, (1, tokens),
                        generator=torch.Generator().manual_seed(0))
    out = {}
    with torch.no_grad():
        for mode in MODES:
            apply_pack(model, pack, mode=mode)
            model(input_ids=ids)  # warm-up
            out[f"forward_{mode}_s"] = statistics.median(
                _timed(lambda: model(input_ids=ids)) for _ in range(repeats))
            unapply_pack(model, pack)
    release_buffers(model)
    return out


def synthetic_pair(out: Path, cfg: dict = BIG) -> dict:
    base, tuned = make_synthetic_pair(out / "synthetic", cfg)
    n_params = sum(math.prod(i.shape) for i in checkpoint_index(base).values())
    packs = out / "synthetic-packs"
    packs.mkdir(exist_ok=True)
    compact = _measure(base, tuned, load_policy("compact"), packs)
    # the budget mode at BitDelta's bytes is left to the tiny pair: on 2 shared cores it adds
    # many minutes here
    rows = [compact if p.name == "compact" else _measure(base, tuned, p, packs)
            for p in policies(base, compact["bytes"], 1 / 16) if "BitDelta bytes" not in p.name]
    model = load_base(base)
    for row in rows:
        row.update(apply_vs_load(model, Path(row["path"]), tuned))
        row.update(forward_cost(model, Path(row["path"])))
        row["loadavg"] = os.getloadavg()[0]
    return {"pair": f"synthetic Llama, {n_params / 1e6:.0f}M parameters", "rows": rows,
            "timing": f"medians of {REPEATS} warm-cache runs each, interleaved; load = "
                      "AutoModelForCausalLM.from_pretrained(tuned dir) + touching every weight; "
                      "merge = read_pack + apply_pack (exact unapply kept) on the loaded base; "
                      "hooks = read_pack + apply_pack(mode='hooks') (weights untouched, delta "
                      "added to module outputs); fwd = one forward pass of 1 x 128 tokens"}


def markdown(results: dict) -> str:
    lines = []
    for key, res in results.items():
        if not isinstance(res, dict):
            continue
        if "error" in res:
            lines.append(f"\n**{key}**: not run ({res['error']})\n")
            continue
        if "gptq" in res:
            lines += _gptq_markdown(key, res)
            continue
        if "skills" in res:
            lines.append(f"\n**{key}**: {res['pair']}\n")
            lines += ["| skill | test prompts | base | fine-tuned | compact | norm. accuracy "
                      "| file % of dense fp16 | rel. error | compact + tune_pack | norm. accuracy "
                      "| file % | tune s |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
            for r in res["skills"]:
                lines.append(f"| {r['skill']} | {r['n_test']} | {r['base_accuracy']:.3f} | "
                             f"{r['tuned_accuracy']:.3f} | {r['compact_accuracy']:.3f} | "
                             f"{r['normalised_accuracy']:.3f} | {100 * r['ratio']:.2f} | "
                             f"{r['rel_error']:.4f} | {r['healed_accuracy']:.3f} | "
                             f"{r['healed_normalised_accuracy']:.3f} | "
                             f"{100 * r['healed_ratio']:.2f} | "
                             f"{r['heal_seconds']:.0f} |")
            continue
        tiny = "tuned_accuracy" in res
        lines.append(f"\n**{key}**: {res['pair']}" + (
            f" (exact match: base {res['base_accuracy']:.3f}, "
            f"fine-tuned {res['tuned_accuracy']:.3f})"
            if tiny else "") + "\n")
        head = ["policy", "file bytes", "file % of dense fp16", "payload %", "rel. error"]
        head += ["norm. accuracy"] if tiny else [
            "merge apply s", "first merge s", "hooks apply s", "load tuned s",
            "load/merge", "load/hooks", "fwd merged s", "fwd hooked s"]
        head += ["compress s"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in res["rows"]:
            cells = [r["policy"], f"{r['bytes']:,}", f"{100 * r['ratio']:.2f}",
                     f"{100 * r.get('payload_ratio', float('nan')):.2f}", f"{r['rel_error']:.4f}"]
            cells += [f"{r['normalised_accuracy']:.3f}"] if tiny else [
                f"{r['apply_s']:.3f}", f"{r['first_apply_s']:.3f}", f"{r['hooks_apply_s']:.3f}",
                f"{r['load_full_s']:.3f}", f"{r['load_over_apply']:.2f}x",
                f"{r['hooks_load_over_apply']:.2f}x", f"{r['forward_merge_s']:.3f}",
                f"{r['forward_hooks_s']:.3f}"]
            cells += [f"{r['compress_s']:.1f}"]
            lines.append("| " + " | ".join(cells) + " |")
        if "timing" in res:
            lines.append(f"\nTiming: {res['timing']}.")
    lines.append(f"\nLoad average while running: {results.get('loadavg', '?')}.")
    return "\n".join(lines)


def _gptq_markdown(key: str, res: dict) -> list[str]:
    lines = [f"\n**{key}**: {res['pair']}; GPTQ >= RTN on {res['met']} skills\n",
             "| skill | n | fine-tuned | compact RTN [95% CI] | calib. alloc., RTN | "
             "compact + GPTQ | file bytes RTN / GPTQ | GPTQ - RTN [95% CI] | "
             "GPTQ - calib. RTN [95% CI] |", "|---|---|---|---|---|---|---|---|---|"]
    for s in res["gptq"]:
        cells = [s["skill"], str(s["n_test"]), f"{sum(s['tuned']) / s['n_test']:.3f}"]
        cells += [f"{r['accuracy']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]" for r in s["rows"]]
        cells.append(f"{s['rows'][0]['bytes']:,} / {s['rows'][2]['bytes']:,}")
        for k in ("gptq_vs_rtn", "gptq_vs_calibrated_rtn"):
            t = s[k]
            cells.append(f"{t['difference']:+.3f} [{t['ci'][0]:+.3f}, {t['ci'][1]:+.3f}]")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def run(out_dir: Path) -> None:
    """Run both pairs, print the Markdown table, write packs.json and packs.md into out_dir."""
    out = Path(out_dir) / "packs"
    out.mkdir(parents=True, exist_ok=True)
    # 2 threads at most (a shared machine); OMP_NUM_THREADS=1 is faster when it is loaded
    torch.set_num_threads(max(1, min(2, int(os.environ.get("OMP_NUM_THREADS", 2)))))
    results = {}
    load_before = os.getloadavg()
    for key, fn in (("tiny", tiny_pair), ("tiny_skills", tiny_skills),
                    ("gptq_skills", gptq_skills), ("synthetic_100m", synthetic_pair)):
        try:
            results[key] = fn(out)
        except ImportError as exc:  # the zoo is another part of the project
            results[key] = {"error": f"{type(exc).__name__}: {exc}"}
        # written after each pair, so a run cut short keeps what it measured
        results["loadavg"] = f"before {load_before[0]:.2f} / after {os.getloadavg()[0]:.2f} (1-min)"
        table = markdown(results)
        (out / "packs.md").write_text(table + "\n")
        (out / "packs.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(table)
