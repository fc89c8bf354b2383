"""SkillPacks at model scale: bytes, delta error, wall time and peak memory of the budget mode
before and after the two-pass rewrite, the presets, and mergekit-extract-lora, side by side.

The pair is a random-init Qwen2 (bf16, tied embeddings) or Llama (``1b``: bf16, untied head)
and a copy whose every linear delta
is a power-law spectrum at 1% of the weight's norm plus noise, and 3% of whose embedding rows
moved. Each compression runs in its own process; its peak RSS is that process's ru_maxrss.
"before" is the code of the last commit (``git archive HEAD``), run the same way.

Environment: SKILLSTORE_BENCH_SCALE=0.5b for Qwen2-0.5B's shape, 1b for TinyLlama-1.1B's
(a Llama; default 100m: a ~100M model that runs in minutes on 2 shared cores; smoke: a few M,
to check the bench itself);
SKILLSTORE_BENCH_MERGEKIT=path of a mergekit-extract-lora executable (default: the one in
bench/out/mergekit-venv, which the bench makes on first use; skipped if that fails);
SKILLSTORE_BENCH_SCALE_RUNS=TEXT runs only the compressions whose label, with its version
("pack compress --budget 5 (after)"), holds TEXT;
SKILLSTORE_BENCH_SCALE_NOISE=X sets the noise added to each linear delta, as a share of its
low-rank part's norm (default 0.2, the issue's pair).

The table's first row is the floor of that pair: the error left when every linear delta keeps
its best rank-64 approximation (the signal's rank) unquantised and every embedding row exactly.
The noise is full-rank, so a compression at a few percent of the bytes gets below it only by
storing noise: a ratio of errors against the peer much above the peer's error over this floor
is out of reach on that pair, whatever the method.
"""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
SHAPES = {
    "smoke": {"vocab_size": 2048, "hidden_size": 256, "intermediate_size": 512,
              "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2},
    "100m": {"vocab_size": 32000, "hidden_size": 768, "intermediate_size": 2048,
             "num_hidden_layers": 12, "num_attention_heads": 12, "num_key_value_heads": 2},
    "0.5b": {"vocab_size": 151936, "hidden_size": 896, "intermediate_size": 4864,
             "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2},
    "1b": {"model_type": "llama", "tie_word_embeddings": False, "vocab_size": 32000,
           "hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22,
           "num_attention_heads": 32, "num_key_value_heads": 4},
}
SPECTRUM_RANK, DELTA_SHARE, ROW_SHARE = 64, 0.01, 0.03
NOISE_SHARE = float(os.environ.get("SKILLSTORE_BENCH_SCALE_NOISE", "0.2"))

# One compression, in a fresh process: (label, code version, policy, budget)
RUNS = [("pack compress --budget 5", "before", "balanced", 0.05),
        ("pack compress --budget 5", "after", "balanced", 0.05),
        ("pack compress --policy compact", "before", "compact", None),
        ("pack compress --policy compact", "after", "compact", None),
        ("pack compress --policy balanced", "before", "balanced", None),
        ("pack compress --policy balanced", "after", "balanced", None)]

COMPRESS = """
import sys, time
from skillstore.packs import compress_checkpoint, load_policy
budget = None if sys.argv[4] == "none" else float(sys.argv[4])
s = compress_checkpoint(sys.argv[1], sys.argv[2], load_policy(sys.argv[3], budget=budget),
                        sys.argv[5])
"""

MEASURED = """
import json, resource, subprocess, sys, time
t = time.perf_counter()
rc = subprocess.run(sys.argv[2:], env=json.loads(sys.argv[1])).returncode
wall = time.perf_counter() - t
print(json.dumps({"rc": rc, "wall": wall,
                  "rss": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024}))
"""


def make_pair(root: Path, shape: dict) -> tuple[Path, Path]:
    from transformers import AutoConfig, AutoModelForCausalLM

    base_dir, tuned_dir = root / "base", root / "tuned"
    if (tuned_dir / "config.json").is_file():
        return base_dir, tuned_dir
    torch.manual_seed(0)
    shape = {"model_type": "qwen2", "tie_word_embeddings": True, **shape}
    cfg = AutoConfig.for_model(shape.pop("model_type"), **shape, max_position_embeddings=512,
                               torch_dtype="bfloat16")
    model = AutoModelForCausalLM.from_config(cfg).to(torch.bfloat16)
    model.save_pretrained(base_dir)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() != 2:
                continue
            w = p.float()
            if "embed_tokens" in name:
                rows = torch.randperm(p.shape[0], generator=gen)[:int(ROW_SHARE * p.shape[0])]
                w[rows] += 0.05 * w[rows].norm(dim=1, keepdim=True) / math.sqrt(p.shape[1]) * \
                    torch.randn(len(rows), p.shape[1], generator=gen)
            else:
                m, n = p.shape
                s = 1.0 / torch.arange(1, SPECTRUM_RANK + 1, dtype=torch.float32)
                low = (torch.linalg.qr(torch.randn(m, SPECTRUM_RANK, generator=gen))[0] * s) @ \
                    torch.linalg.qr(torch.randn(n, SPECTRUM_RANK, generator=gen))[0].T
                low *= DELTA_SHARE * w.norm() / low.norm()
                noise = torch.randn(m, n, generator=gen)
                w += low + noise * (NOISE_SHARE * low.norm() / noise.norm())
            p.copy_(w.to(p.dtype))
    model.save_pretrained(tuned_dir)
    return base_dir, tuned_dir


def old_source(out: Path) -> Path:
    """The last commit's ``skillstore`` package, to run the code from before side by side."""
    dest = out / "before-src"
    if not (dest / "skillstore").is_dir():
        data = subprocess.run(["git", "archive", "HEAD", "skillstore"], cwd=ROOT, check=True,
                              capture_output=True).stdout
        dest.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            tar.extractall(dest, filter="data")
    return dest


def measured(cmd: list[str], env: dict, cwd: Path) -> dict:
    """Run ``cmd`` under a wrapper process that reports its wall time and peak RSS. ``cwd``
    holds no ``skillstore``, so that PYTHONPATH decides which code runs."""
    res = subprocess.run([sys.executable, "-c", MEASURED, json.dumps(env), *cmd], cwd=cwd,
                         capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def relative_error(base: Path, tuned: Path, lost) -> float:
    """sqrt(sum of ``lost(name, delta)`` / sum of squared deltas) over every 2-D weight, where
    ``lost`` is a reconstruction's squared error on that weight."""
    from skillstore.packs.delta import iter_deltas

    num = den = 0.0
    for name, d, _ in iter_deltas(base, tuned):
        if d.dim() != 2:
            continue
        num += lost(name, d)
        den += float((d.double() ** 2).sum())
    return math.sqrt(num / den)


def pack_error(base: Path, tuned: Path, pack: Path) -> float:
    from skillstore.packs import read_pack

    pf = read_pack(pack)

    def lost(name, d):
        rec = pf.decode(name).to_dense() if name in pf.manifest["tensors"] else torch.zeros_like(d)
        return float(((d - rec.reshape(d.shape)) ** 2).sum())

    return relative_error(base, tuned, lost)


def floor_error(base: Path, tuned: Path) -> float:
    """The relative error of the pair's best rank-``SPECTRUM_RANK`` approximation per linear
    delta, unquantised, with embedding rows kept exactly: what the noise alone leaves."""

    def lost(name, d):
        if "embed_tokens" in name:
            return 0.0
        s = torch.linalg.svdvals(d.float()).double()
        return float((s[SPECTRUM_RANK:] ** 2).sum())

    return relative_error(base, tuned, lost)


def lora_error(base: Path, tuned: Path, adapter: Path) -> float:
    from safetensors.torch import load_file

    cfg = json.loads((adapter / "adapter_config.json").read_text())
    w = load_file(adapter / "adapter_model.safetensors")

    def lost(name, d):
        module = name.removesuffix(".weight")
        key = f"base_model.model.{module}"
        rec = torch.zeros_like(d)
        short = module.split(".", 1)[-1] if module.startswith("model.") else module
        rank = cfg.get("rank_pattern", {}).get(short, cfg["r"])
        alpha = cfg.get("alpha_pattern", {}).get(short, cfg["lora_alpha"])
        if f"{key}.lora_A.weight" in w:
            rec = (w[f"{key}.lora_B.weight"].float() @ w[f"{key}.lora_A.weight"].float())
            rec *= alpha / rank
        elif f"{key}.lora_embedding_A" in w:
            rec = (w[f"{key}.lora_embedding_B"].float() @ w[f"{key}.lora_embedding_A"].float()).T
            rec *= alpha / rank
        return float(((d - rec) ** 2).sum())

    return relative_error(base, tuned, lost)


MERGEKIT_VENV = ROOT / "bench/out/mergekit-venv"
MERGEKIT_PACKAGES = ("mergekit==0.1.5", "immutables", "protobuf", "sentencepiece")


def mergekit_exe() -> Path | None:
    """mergekit-extract-lora from SKILLSTORE_BENCH_MERGEKIT, or from its own venv, made on
    first use: a venv that sees this one's packages (torch, transformers, peft), with mergekit
    installed without dependencies, as the PyPI torch wheel would be the multi-GB CUDA one."""
    if "SKILLSTORE_BENCH_MERGEKIT" in os.environ:
        exe = Path(os.environ["SKILLSTORE_BENCH_MERGEKIT"])
        return exe if exe.is_file() else None
    exe = MERGEKIT_VENV / "bin/mergekit-extract-lora"
    if exe.is_file():
        return exe
    import site
    import venv

    try:
        venv.create(MERGEKIT_VENV, with_pip=True)
        lib = next(MERGEKIT_VENV.glob("lib/python*/site-packages"))
        (lib / "skillstore-venv.pth").write_text("\n".join(site.getsitepackages()) + "\n")
        subprocess.run([str(MERGEKIT_VENV / "bin/pip"), "install", "-q", "--no-deps",
                        *MERGEKIT_PACKAGES], check=True, timeout=600)
    except (OSError, subprocess.SubprocessError, StopIteration) as exc:
        print(f"mergekit-extract-lora: could not install it ({exc})")
        return None
    return exe if exe.is_file() else None


def lora_rank_for(base: Path, target_bytes: int) -> int:
    """The LoRA rank whose bf16 factors over every 2-D weight take ``target_bytes``."""
    from skillstore.packs.delta import checkpoint_index

    index = checkpoint_index(base)
    shapes = [i.shape for i in index.values() if len(i.shape) == 2]
    if "lm_head.weight" not in index:  # tied: it writes a LoRA for the head all the same
        shapes += [i.shape for n, i in index.items() if n.endswith("embed_tokens.weight")]
    per_rank = sum(2 * (m + n) for m, n in shapes)
    return max(1, round(target_bytes / per_rank))


def run(out_dir: Path) -> None:
    from skillstore.packs.delta import checkpoint_index

    shape_name = os.environ.get("SKILLSTORE_BENCH_SCALE", "100m")
    out = Path(out_dir) / "scale" / (shape_name if NOISE_SHARE == 0.2
                                     else f"{shape_name}-noise{NOISE_SHARE:g}")
    out.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    base, tuned = make_pair(out / "pair", SHAPES[shape_name])
    params = sum(math.prod(i.shape) for i in checkpoint_index(base).values())
    arch = SHAPES[shape_name].get("model_type", "qwen2")
    print(f"pair: synthetic {arch} {shape_name}, {params / 1e6:.0f}M parameters, noise "
          f"{NOISE_SHARE:g} ({time.perf_counter() - t:.0f} s to build or find)", flush=True)
    dense = 2 * params
    before = old_source(out)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    rows = [{"run": f"floor: rank-{SPECTRUM_RANK} truncation, unquantised, embedding rows exact",
             "bytes": 0, "error": floor_error(base, tuned), "wall": 0.0, "rss": 0}]
    print(json.dumps(rows[0]), flush=True)
    wanted = os.environ.get("SKILLSTORE_BENCH_SCALE_RUNS", "")  # e.g. "budget" for those only
    for label, version, policy, budget in RUNS:
        if wanted not in f"{label} ({version})":
            continue
        pack = out / f"{version}-{policy}-{budget}.safetensors"
        run_env = {**env, "PYTHONPATH": str(before if version == "before" else ROOT)}
        m = measured([sys.executable, "-c", COMPRESS, str(base), str(tuned), policy,
                      str(budget).lower(), str(pack)], run_env, out)
        if m["rc"]:
            print(f"{label} ({version}) failed with exit status {m['rc']}", flush=True)
            continue
        row = {"run": f"{label} ({version})", "bytes": pack.stat().st_size,
               "error": pack_error(base, tuned, pack), "wall": m["wall"], "rss": m["rss"]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    exe = mergekit_exe()
    target = next((r["bytes"] for r in rows if r["run"] == "pack compress --budget 5 (after)"),
                  None)
    if exe is None or target is None:
        print("mergekit-extract-lora: skipped (not installed; see the module docstring)")
    else:
        rank = lora_rank_for(base, target)
        adapter = out / f"mergekit-r{rank}"
        m = measured([str(exe), "--model", str(tuned), "--base-model", str(base), "--out-path",
                      str(adapter), "--max-rank", str(rank), "--embed-lora"], env, out)
        if m["rc"]:
            print(f"mergekit-extract-lora failed with exit status {m['rc']}", flush=True)
        else:
            size = sum(f.stat().st_size for f in adapter.glob("*.safetensors"))
            row = {"run": f"mergekit-extract-lora, rank {rank}, --embed-lora", "bytes": size,
                   "error": lora_error(base, tuned, adapter), "wall": m["wall"],
                   "rss": m["rss"]}
            rows.append(row)
            print(json.dumps(row), flush=True)
    table = ["| run | bytes | % of dense fp16 | rel. delta error | wall s | peak RSS GB |",
             "|---|---|---|---|---|---|"]
    table += [f"| {r['run']} | {r['bytes']:,} | {100 * r['bytes'] / dense:.2f} | "
              f"{r['error']:.4f} | {r['wall']:.1f} | {r['rss'] / 1e9:.2f} |" if r["bytes"]
              else f"| {r['run']} | | | {r['error']:.4f} | | |" for r in rows]
    ours = next((r for r in rows if r["run"] == "pack compress --budget 5 (after)"), None)
    peer = next((r for r in rows if r["run"].startswith("mergekit")), None)
    if ours and peer:
        table.append(f"\nmergekit / budget 5 error at {100 * ours['bytes'] / dense:.2f}% against "
                     f"{100 * peer['bytes'] / dense:.2f}%: {peer['error'] / ours['error']:.2f}x "
                     f"(mergekit / floor: {peer['error'] / rows[0]['error']:.2f}x)")
    load = os.getloadavg()[0]
    text = "\n".join(table) + f"\n\nLoad average (1 min) at the end: {load:.2f}\n"
    (out / "scale.md").write_text(text)
    (out / "scale.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(text)
