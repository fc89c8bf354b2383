"""The GPU check: train, compress, apply and evaluate on one GPU in minutes, as one table.

`bench/gpu_check.sh` runs it where a GPU is lent (`make gpu-check`). A random-init Llama shaped
like Qwen2.5-0.5B (24 layers, width 896, vocabulary 151,936, tied embeddings; 494 M parameters)
is saved in bf16, trained for 50 TRL SFT steps under ``accelerate launch`` on one GPU (the
multi-GPU worker's path, training.launch), its measured peak memory put beside the memory plan's
estimate; the fine-tune is compressed into a pack, the pack applied to the base, and the skill's
lm-eval task run with the pack routed by tag. Without CUDA it prints why it skips and exits 0.
``--tiny`` runs the same steps on a 2-layer model on the CPU (a check of the script itself).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

SKILL = "reverse"
STEPS = 50
#: Qwen2.5-0.5B's shape (config.json of Qwen/Qwen2.5-0.5B), as a Llama.
HALF_B = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
              num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
              tie_word_embeddings=True, max_position_embeddings=2048)
TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=8192, tie_word_embeddings=True,
            max_position_embeddings=256)
ONE_GPU = "distributed_type: 'NO'\nnum_processes: 1\nuse_cpu: false\nmixed_precision: bf16\n"
ONE_CPU = "distributed_type: 'NO'\nnum_processes: 1\nuse_cpu: true\nmixed_precision: 'no'\n"


def _base(folder: Path, shape: dict, device: str) -> Path:
    """A random-init Llama of ``shape`` in bf16 with the char tokenizer, saved to ``folder``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from skillstore.zoo.tokenizers import char_tokenizer

    tok = char_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(**shape, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, torch_dtype="bfloat16")
    with torch.device(device):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder


class Table:
    def __init__(self):
        self.rows: list[tuple[str, str, str]] = []

    def add(self, step: str, seconds: float, figure: str) -> None:
        self.rows.append((step, f"{seconds:.1f}", figure))
        print(f"  {step}: {seconds:.1f} s, {figure}", file=sys.stderr, flush=True)

    def print(self, title: str) -> None:
        widths = [max(len(r[i]) for r in [("step", "seconds", "result"), *self.rows])
                  for i in range(3)]
        print(title)
        for row in [("step", "seconds", "result"), *self.rows]:
            print(" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def run(root: Path, *, tiny: bool) -> Table:
    from skillstore.curriculum.build import write_curriculum
    from skillstore.evaluation.runner import run_tasks
    from skillstore.models import load_causal_lm
    from skillstore.packs import compress_checkpoint
    from skillstore.packs.format import read_pack
    from skillstore.packs.graft import apply_pack, unapply_pack
    from skillstore.routing.bank import DeltaBank, PackDeltas
    from skillstore.routing.routers import RoutedModel
    from skillstore.training.launch import launch_training
    from skillstore.training.memory import gib
    from skillstore.training.run import TrainJob
    from skillstore.training.sft import SFTConfig

    device = "cpu" if tiny else "cuda"
    table = Table()
    t0 = time.perf_counter()
    cur = write_curriculum(root / "curriculum", seed=0, n_train=400, n_eval=64)
    skill = cur.skills[SKILL]
    base = _base(root / "base", TINY if tiny else HALF_B, device)
    params = sum(p.numel() for p in load_causal_lm(base, fingerprint=False)[0].parameters())
    table.add("base (random init, bf16)", time.perf_counter() - t0,
              f"{params / 1e6:.1f} M parameters, {cur.root.name}/{SKILL}")

    config = root / "accelerate.yaml"
    config.write_text(ONE_CPU if tiny else ONE_GPU)
    t0 = time.perf_counter()
    out = launch_training("sft", TrainJob(
        base_dir=base, train_path=skill.train, out_dir=root / "tuned", backend="trl",
        sft=SFTConfig(lr=1e-4, max_steps=STEPS, batch_size=8, eval_every=STEPS, stop_loss=0.0)),
        config, scratch_dir=root / "launch")
    memory = out["memory"]
    est, peak = memory["total_bytes"], memory["measured_peak_bytes"] or 0
    table.add(f"train: {out['steps']} TRL SFT steps (accelerate launch)",
              time.perf_counter() - t0,
              f"{out['seconds']:.1f} s in the loop, {out['steps'] / out['seconds']:.1f} steps/s, "
              f"{out['memory']['device']}")
    table.add("memory: estimate vs measured peak", 0.0,
              f"{gib(est)} vs {gib(peak)} ({memory['measured_by']}), "
              f"ratio {est / max(1, peak):.2f}")

    t0 = time.perf_counter()
    summary = compress_checkpoint(base, out["out_dir"], "balanced", root / "pack.safetensors")
    table.add("compress (balanced)", time.perf_counter() - t0,
              f"{summary.bytes / 2 ** 20:.1f} MiB, {summary.ratio:.1f}x of dense fp16, "
              f"rel error {summary.rel_error:.3f}")

    model, tok = load_causal_lm(base, device=device)
    pack = read_pack(summary.path)
    t0 = time.perf_counter()
    apply_pack(model, pack)
    if device == "cuda":
        torch.cuda.synchronize()
    applied = time.perf_counter() - t0
    unapply_pack(model, pack)
    table.add("apply pack (graft in place)", applied, f"{len(list(pack.decoded()))} tensors")

    t0 = time.perf_counter()
    deltas = [PackDeltas(SKILL, {p.name: p for p in pack.decoded()})]
    with RoutedModel(model, DeltaBank(model, deltas), "tag", tag=SKILL,
                     pad_token_id=tok.pad_token_id):
        results = run_tasks(model, tok, [skill.task_name], include_path=cur.tasks_dir,
                            batch_size=16, limit=32)
    first = results[0]
    table.add(f"lm-eval {skill.task_name}, routed by tag", time.perf_counter() - t0,
              f"{first.metric} {first.value:.3f} (n {first.n}; random init: near 0)")
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true",
                        help="a 2-layer model on the CPU: checks the script, not the GPU")
    args = parser.parse_args(argv)
    if not args.tiny and not torch.cuda.is_available():
        print(f"gpu-check skipped: no CUDA device on this machine (torch {torch.__version__}, "
              f"torch.cuda.is_available() is False); run it where a GPU is lent.")
        return 0
    with tempfile.TemporaryDirectory(prefix="skillstore-gpu-check-") as tmp:
        t0 = time.perf_counter()
        table = run(Path(tmp), tiny=args.tiny)
        where = "CPU (--tiny)" if args.tiny else torch.cuda.get_device_name(0)
        table.print(f"gpu-check on {where}: {time.perf_counter() - t0:.0f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
