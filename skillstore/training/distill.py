"""Cross-capability transfer via text: the source answers, a checker filters, the target learns."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from pydantic import BaseModel, ConfigDict, Field

from ..curriculum.skills import GENERAL_SKILLS, SKILLS
from ..errors import TrainingError
from .backends import BUILTIN
from .generate import generate_answers
from .protocol import Backend
from .sft import Progress, SFTConfig, TrainResult

Checker = Callable[[str, str], bool]


def skill_checker(skill: str | None, rows: Iterable[dict]) -> Checker:
    """A skill's rule-based check of a source's answer: the curriculum's checker for a
    curriculum skill, else equality with the reference answer among ``rows``."""
    known = SKILLS.get(skill or "") or GENERAL_SKILLS.get(skill or "")
    if known is not None:
        return known.check
    truth = {r["prompt"]: r["answer"] for r in rows}
    return lambda prompt, answer: truth.get(prompt) == answer


class GenerationConfig(BaseModel):
    """How the source model answers prompts: greedy by default, or sampled with retries."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    do_sample: bool = False
    temperature: float = Field(default=1.0, gt=0)
    samples: int = Field(default=1, ge=1, description="Attempts per prompt (sampling only).")
    greedy_first: bool = Field(default=True, description=(
        "With sampling, make the first attempt greedy and sample only the retries: the "
        "source's greedy answer is its best guess, and sampling then finds answers it missed."))
    max_new_tokens: int = Field(default=32, gt=0)
    batch_size: int = Field(default=256, gt=0)
    seed: int = 0


def source_rows(source, source_tokenizer, prompts: list[str], *, checker: Checker | None = None,
                config: GenerationConfig | None = None, progress: Progress | None = None,
                rejected: dict[str, list[str]] | None = None) -> tuple[list[dict], dict]:
    """Let the source answer every prompt; keep the answers that pass ``checker``.

    Returns (rows, stats) where rows are plain-text prompt/answer pairs: the only thing that
    crosses from the source's tokenizer to the target's. With sampling, each prompt gets up to
    ``samples`` attempts (the first greedy unless ``greedy_first`` is off) and the first
    verified one is kept. ``rejected``, when given, collects the answers the checker refused
    (prompt -> answers): DPO's rejected side.
    """
    cfg = config or GenerationConfig()
    if not prompts:
        raise TrainingError("Distillation got no prompts; pass the skill's training prompts.")
    attempts = cfg.samples if cfg.do_sample else 1
    kept: dict[str, str] = {}
    generated = 0
    pending = list(dict.fromkeys(prompts))
    for attempt in range(attempts):
        sample = cfg.do_sample and not (cfg.greedy_first and attempt == 0)
        answers = generate_answers(
            source, source_tokenizer, pending, max_new_tokens=cfg.max_new_tokens,
            batch_size=cfg.batch_size, do_sample=sample, temperature=cfg.temperature,
            seed=cfg.seed + attempt,
            progress=((lambda s, f, a=attempt: progress("generate", (a + f) / attempts))
                      if progress else None))
        generated += len(answers)
        for prompt, answer in zip(pending, answers, strict=True):
            if answer and (checker is None or checker(prompt, answer)):
                kept[prompt] = answer
            elif answer and rejected is not None:
                rejected.setdefault(prompt, []).append(answer)
        pending = [p for p in pending if p not in kept]
        if not pending:
            break
    rows = [{"prompt": p, "answer": kept[p]} for p in prompts if p in kept]
    stats = {"n_prompts": len(set(prompts)), "n_generated": generated, "n_kept": len(set(kept)),
             "acceptance": len(kept) / max(1, len(set(prompts))), "verified": checker is not None}
    return rows, stats


def distill(source, source_tokenizer, target, target_tokenizer, train_prompts: list[str],
            val_prompts: list[str] | None = None, *, checker: Checker | None = None,
            generation: GenerationConfig | None = None, sft: SFTConfig | None = None,
            progress: Progress | None = None,
            rejected: dict[str, list[str]] | None = None,
            backend: Backend = BUILTIN) -> TrainResult:
    """GraftLLM-style distillation: source-generated, checker-verified text, then SFT of the target
    on ``backend``.

    The two models may have different architectures and tokenizers: the answers are decoded
    to text by the source's tokenizer and re-encoded by the target's; no logits are shared.
    """
    rows, stats = source_rows(source, source_tokenizer, train_prompts, checker=checker,
                              config=generation, progress=progress, rejected=rejected)
    if not rows:
        raise TrainingError(
            f"The source model produced no accepted answer for {len(train_prompts)} prompts; "
            "train the source on the skill first, or relax the checker."
        )
    val_rows = None
    if val_prompts:
        val_rows, _ = source_rows(source, source_tokenizer, val_prompts, checker=checker,
                                  config=generation)
    result = backend.sft(target, target_tokenizer, rows, val_rows or None, sft or SFTConfig(),
                         (lambda s, f: progress("train", f)) if progress else None)
    result.metrics["distill"] = stats
    result.metrics["distilled_rows"] = rows
    return result
