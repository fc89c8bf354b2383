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
from .sft import (
    Progress,
    TrainResult,
    activation_checkpointing,
    adamw,
    check_finite,
    lr_lambda,
    optimizer_step,
)


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
    samples: int = Field(default=4, ge=0, le=64, description=(
        "Sampled answers per prompt, after the greedy one, to look for a rejected answer."))
    temperature: float = Field(default=1.0, gt=0)
    synthetic_rejected: bool = Field(default=False, description=(
        "When no refused answer is found for a prompt, use a shuffled copy of the chosen answer "
        "as the rejected one (a fallback; off by default, counted in the pairs' stats)."))


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float) -> torch.Tensor:
    """Mean of -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))) over the batch
    (Rafailov et al. 2023)."""
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


def preference_pairs(model, tokenizer, rows: list[dict], checker, *,
                     candidates: dict[str, list[str]] | None = None,
                     config: DPOConfig | None = None,
                     batch_size: int = 64) -> tuple[list[dict], dict]:
    """prompt/chosen/rejected rows, and where the rejected answers came from.

    chosen is each row's verified answer. rejected is the first answer the rule-based
    ``checker`` refuses, looked for among the source's refused answers (``candidates``,
    prompt -> answers), then the model's own greedy answer, then ``config.samples`` sampled
    ones. A prompt with no refused answer is dropped, unless ``config.synthetic_rejected``
    allows the documented fallback: a shuffled copy of the chosen answer.
    """
    cfg = config or DPOConfig()
    wrong: dict[str, str] = {}
    origin = {"source": 0, "greedy": 0, "sampled": 0, "synthetic": 0, "dropped": 0}
    for prompt in (r["prompt"] for r in rows):
        bad = next((a for a in (candidates or {}).get(prompt, ()) if a and not checker(prompt, a)),
                   None)
        if bad is not None:
            wrong[prompt] = bad
            origin["source"] += 1
    for attempt in range(cfg.samples + 1):
        pending = [r["prompt"] for r in rows if r["prompt"] not in wrong]
        if not pending:
            break
        sampled = attempt > 0
        answers = generate_answers(model, tokenizer, pending, batch_size=batch_size,
                                   do_sample=sampled, temperature=cfg.temperature,
                                   seed=cfg.seed + attempt)
        for prompt, answer in zip(pending, answers, strict=True):
            if answer and not checker(prompt, answer):
                wrong[prompt] = answer
                origin["sampled" if sampled else "greedy"] += 1
    rng = random.Random(cfg.seed)
    pairs = []
    for row in rows:
        good, bad = row["answer"], wrong.get(row["prompt"])
        if bad is None or bad == good:
            if not cfg.synthetic_rejected:
                origin["dropped"] += 1
                continue
            chars = list(good)
            rng.shuffle(chars)
            bad = "".join(chars) if "".join(chars) != good else good + good[-1:]
            origin["synthetic"] += 1
        pairs.append({"prompt": row["prompt"], "chosen": good, "rejected": bad})
    if not pairs:
        raise DatasetError(
            f"No preference pair: the model and the source answered all {len(rows)} prompts in "
            "a way the checker accepts, so there is no rejected answer to learn against; raise "
            "dpo.samples or dpo.temperature, or allow the fallback with "
            "--dpo synthetic_rejected=true.")
    return pairs, origin


def train_dpo(model, reference, tokenizer, pairs: list[dict], config: DPOConfig | None = None,
              progress: Progress | None = None, *,
              gradient_checkpointing: bool = False) -> TrainResult:
    """Train ``model`` in place with the DPO loss; ``reference`` (usually the SFT model) stays
    frozen."""
    with activation_checkpointing(model, gradient_checkpointing):
        return _train_dpo(model, reference, tokenizer, pairs, config or DPOConfig(), progress)


def _train_dpo(model, reference, tokenizer, pairs: list[dict], cfg: DPOConfig,
               progress: Progress | None) -> TrainResult:
    if not pairs:
        raise DatasetError("DPO got no preference pairs; give at least one "
                           "prompt/chosen/rejected row.")
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
    opt = adamw(params, cfg.lr)
    warmup = max(1, int(cfg.warmup_frac * cfg.max_steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_lambda(s, cfg.max_steps, warmup, 0.1))
    idx = list(range(len(enc)))
    model.train()
    step, losses, t0 = 0, [], time.perf_counter()
    while step < cfg.max_steps:
        for chunk in batches(idx, cfg.batch_size, gen):  # type: ignore[arg-type]
            chosen = collate([enc[i][0] for i in chunk], pad, device)
            rejected = collate([enc[i][1] for i in chunk], pad, device)
            with torch.no_grad():
                ref_c = sequence_logprobs(reference, chosen)
                ref_r = sequence_logprobs(reference, rejected)
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
                               "n_pairs": len(pairs), "initial_loss_expected": math.log(2),
                               "backend": "builtin", "seed": cfg.seed,
                               "config": cfg.model_dump()})
