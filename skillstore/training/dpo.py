"""Direct preference optimisation against a frozen reference, and preference-pair building."""

from __future__ import annotations

import math
import random
import time

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from ..errors import DatasetError
from .data import IGNORE_INDEX, batches, collate, encode_example, pad_id_of
from .generate import generate_answers
from .sft import Progress, TrainResult, check_finite, lr_lambda, optimizer_step


class DPOConfig(BaseModel):
    """DPO hyper-parameters; ``beta`` is the strength of the pull towards the reference."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    beta: float = Field(default=0.1, gt=0)
    lr: float = Field(default=2e-4, gt=0)
    max_steps: int = Field(default=100, gt=0)
    batch_size: int = Field(default=16, gt=0)
    warmup_frac: float = Field(default=0.1, ge=0, lt=1)
    grad_clip: float = Field(default=1.0, gt=0)
    max_length: int = Field(default=128, gt=1)
    seed: int = 0


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float) -> torch.Tensor:
    """Mean of -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))) over the batch (Rafailov et al. 2023)."""
    margin = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    return -F.logsigmoid(beta * margin).mean()


def sequence_logprobs(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum of log p(token) over the labelled (answer) tokens of each sequence."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"][:, 1:]
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    mask = labels != IGNORE_INDEX
    picked = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * mask).sum(-1)


def preference_pairs(target, target_tokenizer, rows: list[dict], checker, *, chosen: list[str] | None = None,
                     seed: int = 0, batch_size: int = 64) -> list[dict]:
    """prompt/chosen/rejected rows: chosen is the verified answer (``chosen`` or the reference);
    rejected is the target's own greedy answer when wrong, else a perturbed failing answer."""
    rng = random.Random(seed)
    own = generate_answers(target, target_tokenizer, [r["prompt"] for r in rows], batch_size=batch_size)
    pairs = []
    for i, (row, mine) in enumerate(zip(rows, own, strict=True)):
        good = chosen[i] if chosen is not None else row["answer"]
        bad = mine
        if checker(row["prompt"], mine) or not mine or mine == good:
            chars = list(good)
            rng.shuffle(chars)
            bad = "".join(chars) if "".join(chars) != good else good + good[-1:]
        pairs.append({"prompt": row["prompt"], "chosen": good, "rejected": bad})
    return pairs


def train_dpo(model, reference, tokenizer, pairs: list[dict], config: DPOConfig | None = None,
              progress: Progress | None = None) -> TrainResult:
    """Train ``model`` in place with the DPO loss; ``reference`` stays frozen (usually the SFT model)."""
    cfg = config or DPOConfig()
    if not pairs:
        raise DatasetError("DPO got no preference pairs; give at least one prompt/chosen/rejected row.")
    enc = [(encode_example(tokenizer, p["prompt"], p["chosen"], cfg.max_length),
            encode_example(tokenizer, p["prompt"], p["rejected"], cfg.max_length)) for p in pairs]
    device = next(model.parameters()).device
    pad = pad_id_of(tokenizer)
    reference.eval()
    for p in reference.parameters():
        p.requires_grad_(False)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr)
    warmup = max(1, int(cfg.warmup_frac * cfg.max_steps))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_lambda(s, cfg.max_steps, warmup, 0.1))
    idx = list(range(len(enc)))
    model.train()
    step, losses, t0 = 0, [], time.perf_counter()
    while step < cfg.max_steps:
        for chunk in batches(idx, cfg.batch_size, gen):  # type: ignore[arg-type]
            chosen = collate([enc[i][0] for i in chunk], pad, device)
            rejected = collate([enc[i][1] for i in chunk], pad, device)
            with torch.no_grad():
                ref_c, ref_r = sequence_logprobs(reference, chosen), sequence_logprobs(reference, rejected)
            loss = dpo_loss(sequence_logprobs(model, chosen), sequence_logprobs(model, rejected),
                            ref_c, ref_r, cfg.beta)
            check_finite(loss, step, "DPO")
            optimizer_step(loss, opt, sched, params, cfg.grad_clip)
            step += 1
            losses.append(float(loss.detach()))
            if progress:
                progress("train", step / cfg.max_steps)
            if step >= cfg.max_steps:
                break
    model.eval()
    tail = losses[-10:]
    return TrainResult(model, {"steps": step, "seconds": time.perf_counter() - t0,
                               "first_loss": losses[0], "final_loss": sum(tail) / len(tail),
                               "n_pairs": len(pairs), "initial_loss_expected": math.log(2)})
