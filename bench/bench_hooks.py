"""Routed-state hooks at scale: resident memory against the packs' bytes and top-1 routed
forward latency against the plain base, the dense hooks of before and the current ones side
by side, on a synthetic Qwen2 with its full 151,936-token vocabulary.

Environment: SKILLSTORE_BENCH_HOOKS_LAYERS (default 2; 24 is Qwen2-0.5B's full depth),
SKILLSTORE_BENCH_HOOKS_PACKS (default 4; issue 16 asks for 10), SKILLSTORE_BENCH_HOOKS_POLICY
(default balanced; a comma list, such as compact,balanced, compresses each synthetic fine-tune
once per policy and measures each policy's packs in turn), SKILLSTORE_BENCH_HOOKS_BANKS
(default current,dense; current alone skips the dense baseline, whose float32 copies of pruned
parts grow with the pack count)."""

from __future__ import annotations

import copy
import ctypes
import ctypes.util
import gc
import json
import math
import os
import statistics
import time
from pathlib import Path

import psutil
import torch
from torch import nn
from torch.nn import functional as F

from skillstore.packs import compress_checkpoint, read_pack
from skillstore.packs.export import load_base
from skillstore.packs.hooks import hook_input, owners
from skillstore.packs.parts import LowRankPart
from skillstore.routing import DeltaBank, PackDeltas

# Qwen2-0.5B's embedding (tied to the head) and layer shapes, with few layers: the embedding
# and head are what the old hooks made dense, and they dominate a 0.5B model's forward pass.
QWEN2 = {"vocab_size": 151936, "hidden_size": 896, "intermediate_size": 4864,
         "num_attention_heads": 14, "num_key_value_heads": 2, "max_position_embeddings": 512,
         "tie_word_embeddings": True}
LAYERS = int(os.environ.get("SKILLSTORE_BENCH_HOOKS_LAYERS", "2"))
PACKS = int(os.environ.get("SKILLSTORE_BENCH_HOOKS_PACKS", "4"))
BATCH, TOKENS, REPEATS = 8, 32, 5
TRAINED_ROWS = 3000  # token rows a fine-tune moves: the ones its data used
# balanced: magnitude-pruned embedding, quantised low-rank layers (25% of the delta);
# compact: the spectral preset at a 5% budget
POLICIES = os.environ.get("SKILLSTORE_BENCH_HOOKS_POLICY", "balanced").split(",")
BANKS = os.environ.get("SKILLSTORE_BENCH_HOOKS_BANKS", "current,dense").split(",")


def _log(message: str) -> None:
    print(f"[hooks {time.strftime('%H:%M:%S')}] {message}", flush=True)


def pack_path(root: Path, index: int, policy: str) -> Path:
    return root / (f"pack-{index}.safetensors" if policy == "balanced"  # the name it had
                   else f"pack-{index}-{policy}.safetensors")


def make_packs(root: Path) -> tuple[Path, dict[str, list[Path]]]:
    """A bf16 base at random init and PACKS packs per policy, each from its own fine-tune-like
    change: TRAINED_ROWS embedding rows, rank-16 plus noise per matrix, small norm changes."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    base_dir = root / "base"
    paths = {policy: [pack_path(root, i, policy) for i in range(PACKS)] for policy in POLICIES}
    if all(p.is_file() for ps in paths.values() for p in ps):
        return base_dir, paths
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(num_hidden_layers=LAYERS, **QWEN2)).to(torch.bfloat16)
    model.save_pretrained(str(base_dir))
    base = {k: v.clone() for k, v in model.state_dict().items()}
    for i in range(PACKS):
        if all(ps[i].is_file() for ps in paths.values()):
            continue
        g = torch.Generator().manual_seed(100 + i)
        with torch.no_grad():
            for name, p in model.named_parameters():
                d = torch.zeros(p.shape)
                if "embed_tokens" in name:
                    rows = torch.randperm(p.shape[0], generator=g)[:TRAINED_ROWS]
                    d[rows] = 0.05 * p.float().std() * torch.randn(len(rows), p.shape[1],
                                                                   generator=g)
                elif p.dim() == 2:
                    low = torch.randn(p.shape[0], 16, generator=g) @ \
                        torch.randn(16, p.shape[1], generator=g)
                    noise = torch.randn(p.shape, generator=g)
                    d = low / low.norm() + math.sqrt(0.1 / 0.9) * noise / noise.norm()
                    d *= 0.02 * p.float().norm() / d.norm()
                else:
                    d = 0.01 * torch.randn(p.shape, generator=g)
                p.copy_((base[name].float() + d).to(p.dtype))
        tuned = root / "tuned"
        model.save_pretrained(str(tuned))
        for policy, ps in paths.items():
            compress_checkpoint(base_dir, tuned, policy, ps[i])
            _log(f"pack {i} ({policy}): {ps[i].stat().st_size / 1e6:.1f} MB")
    return base_dir, paths


class DenseBank:
    """The routed hooks as they were before: every part that is not low-rank made into a
    dense float32 tensor the size of its weight, factors in float32, contributions in float32.
    Kept here as the baseline the current DeltaBank is measured against."""

    def __init__(self, model: nn.Module, packs: list[PackDeltas]):
        self.weights: torch.Tensor | None = None
        self.enabled = True
        by_param = owners(model)
        self.entries: dict[nn.Module, list] = {}
        for index, pack in enumerate(packs):
            for name, part in pack.parts.items():
                for module, attr in by_param[id(model.get_parameter(name))]:
                    ready = (LowRankPart(name, part.U.float(), part.V.float())  # per owner, as
                             if isinstance(part, LowRankPart) else part.to_dense().float())  # was
                    self.entries.setdefault(module, []).append((index, attr, ready))
        self.handles = [m.register_forward_hook(self._hook, with_kwargs=True)
                        for m in self.entries]

    @property
    def nbytes(self) -> int:
        seen = {}
        for entries in self.entries.values():
            for *_, r in entries:
                for t in (r.U, r.V) if isinstance(r, LowRankPart) else (r,):
                    seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return sum(seen.values())

    def remove(self) -> None:
        for h in self.handles:
            h.remove()

    @staticmethod
    def _change(module, attr, part, x):
        if isinstance(module, nn.Linear) and attr == "weight":
            if isinstance(part, LowRankPart):
                return (x.float() @ part.V.T) @ part.U.T
            return F.linear(x.float(), part)
        if isinstance(module, nn.Linear) and attr == "bias":
            return part.expand(*x.shape[:-1], -1)
        if isinstance(module, nn.Embedding):
            return F.embedding(x, part.U) @ part.V if isinstance(part, LowRankPart) \
                else F.embedding(x, part)
        params = {n: torch.zeros_like(p) for n, p in module.named_parameters(recurse=False)}
        params[attr] = part.to(params[attr].dtype)
        return torch.func.functional_call(module, params, (x,)).float()

    def _hook(self, module, args, kwargs, output):
        if getattr(self, "_busy", False) or not self.enabled:
            return None
        x = hook_input(module, args, kwargs)
        out = output.float()
        for index, attr, part in self.entries[module]:
            rows = self.weights[:, index].nonzero().flatten()
            if rows.numel():
                self._busy = True
                try:
                    change = self._change(module, attr, part, x[rows])
                finally:
                    self._busy = False
                scale = self.weights[rows, index].view(-1, *([1] * (change.dim() - 1)))
                out = out.index_add(0, rows, scale * change)
        return out.to(output.dtype)


def _rss(trim: bool = False) -> int:
    """Resident set size; ``trim`` first hands freed heap back to the OS (glibc), so that
    what the decode freed is not counted as held."""
    gc.collect()
    if trim and (libc := ctypes.util.find_library("c")):
        ctypes.CDLL(libc).malloc_trim(0)
    return psutil.Process().memory_info().rss


def _forward_s(model, ids) -> tuple[float, torch.Tensor]:
    with torch.no_grad():
        t = time.perf_counter()
        logits = model(input_ids=ids).logits
        return time.perf_counter() - t, logits


def measure(base_dir: Path, paths: list[Path], policy: str) -> dict:
    model = load_base(base_dir).to(torch.bfloat16)
    base_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    pack_bytes = sum(p.stat().st_size for p in paths)
    ids = torch.randint(0, QWEN2["vocab_size"], (BATCH, TOKENS),
                        generator=torch.Generator().manual_seed(0))
    # top-1, sample b to pack b % PACKS: every pack is in every pass while PACKS <= BATCH;
    # beyond that, BATCH of them are (the others are held but idle)
    top1 = F.one_hot(torch.arange(BATCH) % PACKS, PACKS).float()
    files = [read_pack(p) for p in paths]
    logits = {}
    _forward_s(model, ids)  # warm-up
    rows = []
    banks = {"current": ("current", DeltaBank), "dense": ("dense (before)", DenseBank)}
    for name, kind in (banks[b] for b in BANKS):
        before = _rss(trim=True)
        t = time.perf_counter()
        bank = kind(model, [PackDeltas(f"p{i}", {p.name: p for p in f.decoded()})
                            for i, f in enumerate(files)])
        build_s = time.perf_counter() - t
        grown, trimmed = _rss() - before, _rss(trim=True) - before
        if isinstance(bank, DeltaBank):
            bank.install()
        bank.weights = top1
        routed, base = [], []
        for _ in range(REPEATS + 1):  # paired: the plain base right before each routed pass
            base.append(_plain_base_s(model, ids, bank))
            seconds, logits[name] = _forward_s(model, ids)
            routed.append(seconds)
        routed.pop(0)
        base.pop(0)
        held = bank.nbytes
        bank.remove()
        del bank
        gc.collect()
        rows.append({"hooks": name, "held_bytes": held, "rss_growth_bytes": grown,
                     "rss_growth_trimmed_bytes": trimmed, "build_s": build_s,
                     "routed_s": statistics.median(routed), "base_s": statistics.median(base),
                     "routed_over_base": statistics.median(
                         [r / b for r, b in zip(routed, base, strict=True)]),
                     "routed_runs_s": routed, "base_runs_s": base})
        _log(f"{name}: holds {held / 1e6:.0f} MB, routed forward {rows[-1]['routed_s']:.2f} s")
    for r in rows:
        # a routed state drops its pack files once the bank is built (states/materialise.py)
        r["resident_bytes"] = base_bytes + r["held_bytes"]
        r["resident_over_target"] = r["resident_bytes"] / (base_bytes + 4 * pack_bytes)
        r["with_files_over_target"] = (r["resident_bytes"] + pack_bytes) / \
            (base_bytes + 4 * pack_bytes)
        r["held_over_packs"] = r["held_bytes"] / pack_bytes
    want, rounding = _reference(model, files, ids, top1)
    for r in rows:
        r["max_logit_error"] = (logits[r["hooks"]].float() - want).abs().max().item()
    return {"model": f"synthetic Qwen2, {LAYERS} layers, vocab {QWEN2['vocab_size']} x "
                     f"{QWEN2['hidden_size']} tied, bf16, {base_bytes / 1e6:.0f} MB",
            "packs": PACKS, "policy": policy, "pack_bytes": pack_bytes, "base_bytes": base_bytes,
            "bf16_base_rounding": rounding, "rows": rows,
            "threads": torch.get_num_threads(), "loadavg": os.getloadavg()[0]}


def _reference(model, files, ids, weights) -> tuple[torch.Tensor, float]:
    """Each sample's logits from a float32 copy of the base with its packs' own decode merged
    at its weights, and how far the plain bf16 base is from the float32 one (for scale)."""
    wide = copy.deepcopy(model).float()
    with torch.no_grad():
        rounding = (wide(input_ids=ids).logits - model(input_ids=ids).logits.float()
                    ).abs().max().item()
        clean = {k: v.clone() for k, v in wide.state_dict().items()}
        rows = []
        for b in range(ids.shape[0]):
            for f, w in zip(files, weights[b].tolist(), strict=True):
                for part in f.decoded() if w else ():
                    part.add_to(wide.get_parameter(part.name), w)
            rows.append(wide(input_ids=ids[b:b + 1]).logits)
            wide.load_state_dict(clean)
    return torch.cat(rows), rounding


def _plain_base_s(model, ids, bank) -> float:
    """The plain base's forward pass with the bank in place but switched off."""
    bank.enabled = False
    try:
        return _forward_s(model, ids)[0]
    finally:
        bank.enabled = True


def markdown(res: dict) -> str:
    mb = 1e6
    lines = [f"{res['model']}; {res['packs']} packs ({res['policy']}), "
             f"{res['pack_bytes'] / mb:.1f} MB of pack files; top-1 routing, batch {BATCH} x "
             f"{TOKENS} tokens, {min(res['packs'], BATCH)} packs in every pass; "
             f"{res['threads']} thread(s), load "
             f"average {res['loadavg']:.1f}.", "",
             "| hooks | held MB | held / pack bytes | RSS growth MB (trimmed) | resident / "
             "(base + 4 x packs) (files kept too) | build s | routed fwd s | plain base fwd s "
             "| routed / base | max logit error |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        lines.append(f"| {r['hooks']} | {r['held_bytes'] / mb:.1f} | "
                     f"{r['held_over_packs']:.2f}x | {r['rss_growth_bytes'] / mb:.0f} "
                     f"({r['rss_growth_trimmed_bytes'] / mb:.0f}) | "
                     f"{r['resident_over_target']:.2f} ({r['with_files_over_target']:.2f}) | "
                     f"{r['build_s']:.1f} | "
                     f"{r['routed_s']:.3f} | {r['base_s']:.3f} | "
                     f"{r['routed_over_base']:.2f}x | {r['max_logit_error']:.4f} |")
    lines += ["", "Targets (issue 16): resident / (base + 4 x packs) <= 1; routed / base <= "
              "1.3x. Resident = base weights + what the hooks hold (a routed state drops its "
              "pack files once the bank is built; in brackets, with the files kept too); RSS "
              "growth is the process's while the bank is built (trimmed: after "
              "malloc_trim, without the freed decode the allocator keeps). Times are medians "
              f"of {REPEATS} warm runs; routed / base is the median of paired runs, the plain "
              "base right before each routed pass. Logit error: against each sample's packs "
              "merged from their own decode into a float32 copy of the base; the plain bf16 "
              f"base is {res['bf16_base_rounding']:.4f} from the float32 one."]
    return "\n".join(lines)


def run(out_dir: Path) -> None:
    """Make the packs (once), measure the hooks for each policy, print and write
    hooks.{json,md} (one result, or a list of them for several policies)."""
    out = Path(out_dir) / "hooks"
    out.mkdir(parents=True, exist_ok=True)
    # 2 threads at most (a shared machine); OMP_NUM_THREADS=1 is faster when it is loaded
    torch.set_num_threads(max(1, min(2, int(os.environ.get("OMP_NUM_THREADS", 2)))))
    base_dir, paths = make_packs(out / f"synthetic-{LAYERS}-layers")
    results = [measure(base_dir, paths[policy], policy) for policy in POLICIES]
    table = "\n\n".join(markdown(r) for r in results)
    results = results[0] if len(results) == 1 else results
    (out / "hooks.md").write_text(table + "\n")
    (out / "hooks.json").write_text(json.dumps(results, indent=2) + "\n")
    print(table)
