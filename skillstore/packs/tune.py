"""Task-aware tuning of a pack's float payload: the bits stay, the grids move.

A compressed pack keeps integer codes (the quantised singular vectors, sparse indices) and a
few floating-point tensors beside them: group scales and offsets, gains, dense norms. Those
floats were chosen to minimise weight error; :func:`tune_pack` moves them instead to minimise
a loss on the skill's training rows of the base model with the pack applied, with every code
fixed: the rows' own answers (cross-entropy), or, given the fine-tune the pack was made from,
that fine-tune's next-token distributions on the same rows (KL divergence: the pack is taught
to answer as its fine-tune does, wrong answers included).
The tuned pack has the same tensors, dtypes and bytes; it is a new pack (new digest) whose
manifest records how it was tuned.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch.func import functional_call

from ..errors import TrainingError
from ..training.data import batches, collate, encode_rows, pad_id_of
from ..training.loss import answer_logits, distill_loss
from ..training.sft import check_finite
from .codecs import get_codec
from .format import SEP, PackFile, tuned_manifest, write_pack
from .graft import _as_pack, check_base

Progress = Callable[[int, int, float], None]  # (step, total, loss)
#: What a pack is tuned toward, where a job or an experiment chooses: the rows' answers
#: ("labels", cross-entropy), or its own fine-tune's next-token distributions on the rows
#: ("teacher", KL). Equal exact match on the zoo, the teacher's answers closer to the
#: fine-tune's (docs/skillpack.md, "Tuning toward the fine-tune").
TuneObjective = Literal["labels", "teacher"]
FLOOR = 0.1  # a value moves in steps of at least this fraction of its tensor's mean magnitude
LOSS_ROWS = 512  # the loss reported before and after tuning is the mean over this many rows


class TuneConfig(BaseModel):
    """How the float payload is tuned; updates are relative to each value's own magnitude."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    steps: int = Field(default=200, gt=0)
    lr: float = Field(default=1e-2, gt=0,
                      description="Adam step on the relative change of each value.")
    batch_size: int = Field(default=64, gt=0)
    max_length: int = Field(default=128, gt=1)
    seed: int = 0


@dataclass
class TuneResult:
    path: Path
    bytes: int
    loss_before: float
    loss_after: float
    steps: int
    seconds: float
    objective: str = "labels"  # or "teacher": what loss_before and loss_after measure


def _rows_digest(rows: list[dict]) -> str:
    h = hashlib.sha256()
    for r in rows:
        h.update(json.dumps([r["prompt"], r["answer"]]).encode())
    return "sha256:" + h.hexdigest()


class _Scored(torch.nn.Module):
    """``model`` as a module whose forward gives `answer_logits`, so that
    ``functional_call`` can swap the packed weights in under it."""

    def __init__(self, model):
        super().__init__()
        self.lm = model

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return answer_logits(self.lm, batch)


def tune_pack(pack_path: PackFile | str | Path, model, tokenizer, train_rows: list[dict],
              out_path: str | Path, config: TuneConfig | None = None,
              progress: Progress | None = None, teacher=None) -> TuneResult:
    """Tune the float payload of ``pack_path`` on ``train_rows`` and write it to ``out_path``.

    ``model`` is the pack's base (checked by fingerprint) and is left unchanged. Training
    minimises a loss of the base plus the decoded pack over the rows' answer tokens, through
    ``torch.func.functional_call``; integer payloads (codes, indices) never change. Without
    ``teacher`` the loss is the SFT cross-entropy on the rows' answers; with ``teacher`` (the
    fine-tuned model the pack was compressed from, same tokenizer) it is KL(teacher || packed
    model) at the same positions, so the pack learns the fine-tune's whole distribution there,
    not only the answer it was trained on.
    """
    cfg = config or TuneConfig()
    pack = _as_pack(pack_path)
    targets = check_base(model, pack)
    if not train_rows:
        raise TrainingError(f"Tuning {str(pack.path)!r} got no training rows; "
                            "pass the skill's train split.")
    examples = encode_rows(tokenizer, train_rows, cfg.max_length, "pack tuning data")
    device = next(model.parameters()).device
    if teacher is not None:
        _check_teacher(teacher, model, pack)
        teacher.eval()
    base = {n: t.detach() for n, t in targets.items()}

    # one relative-change parameter per float payload entry: value = stored * (1 + delta),
    # with the stored magnitude floored so exact zeros can move too
    stored = {k: t.float() for k, t in pack.tensors.items() if t.is_floating_point()}
    floors = {k: t.abs().clamp_min(float(t.abs().mean()) * FLOOR + 1e-12)
              for k, t in stored.items()}
    deltas = {k: torch.zeros_like(t, requires_grad=True) for k, t in stored.items()}
    codecs = {n: get_codec(e["codec"], e["params"]) for n, e in pack.manifest["tensors"].items()}

    def payload(name: str) -> dict[str, torch.Tensor]:
        out = {}
        for key in pack.manifest["tensors"][name]["payload"]:
            full = f"{name}{SEP}{key}"
            out[key] = (stored[full] + deltas[full] * floors[full] if full in stored
                        else pack.tensors[full])
        return out

    def weights() -> dict[str, torch.Tensor]:
        w = {}
        for name, entry in pack.manifest["tensors"].items():
            part = codecs[name].decode(name, tuple(entry["shape"]), entry["info"], payload(name))
            w[name] = base[name] + part.to_dense().reshape(base[name].shape).to(base[name].dtype)
        return w

    pad = pad_id_of(tokenizer)
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    opt = torch.optim.Adam(list(deltas.values()), lr=cfg.lr)
    was_training = model.training
    model.eval()  # no dropout: the loss is the packed model's, as it will be served

    scored = _Scored(model)

    def loss_of(w: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if teacher is None:
            return functional_call(model, w, args=(), kwargs=batch).loss
        with torch.no_grad():
            target = answer_logits(teacher, batch)
        student = functional_call(scored, {f"lm.{n}": t for n, t in w.items()}, args=(batch,))
        return distill_loss(student, target)

    def mean_loss() -> float:
        with torch.no_grad():
            w = weights()
            total = count = 0.0
            for chunk in batches(examples[:LOSS_ROWS], cfg.batch_size, None):
                total += float(loss_of(w, collate(chunk, pad, device))) * len(chunk)
                count += len(chunk)
            return total / max(count, 1)

    t0 = time.perf_counter()
    before = mean_loss()
    step = 0
    try:
        while step < cfg.steps:
            for chunk in batches(examples, cfg.batch_size, gen):
                batch = collate(chunk, pad, device)
                loss = loss_of(weights(), batch)
                check_finite(loss, step, "Pack tuning")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1
                if progress:
                    progress(step, cfg.steps, float(loss.detach()))
                if step >= cfg.steps:
                    break
    finally:
        model.train(was_training)
    after = mean_loss()
    if not math.isfinite(after):
        raise TrainingError(f"Tuning {str(pack.path)!r} ended with loss {after}; "
                            "nothing was written.")

    tensors = dict(pack.tensors)
    with torch.no_grad():
        for k, t in stored.items():
            tensors[k] = (t + deltas[k] * floors[k]).to(pack.tensors[k].dtype).contiguous()
    objective = "labels" if teacher is None else "teacher"
    manifest = tuned_manifest(pack.manifest, {  # write_pack stamps format and digest
        "from": pack.digest, "objective": objective, "steps": step, "lr": cfg.lr,
        "batch_size": cfg.batch_size, "rows": len(examples),
        "rows_digest": _rows_digest(train_rows), "loss_before": before, "loss_after": after})
    size = write_pack(out_path, manifest, tensors)
    return TuneResult(Path(out_path), size, before, after, step, time.perf_counter() - t0,
                      objective)


def _check_teacher(teacher, model, pack: PackFile) -> None:
    """A teacher must score the same vocabulary, and hold every tensor the pack changes in the
    base's shapes: it is the pack's fine-tune, not some other model."""
    vocab = (teacher.get_output_embeddings().weight.shape[0],
             model.get_output_embeddings().weight.shape[0])
    if vocab[0] != vocab[1]:
        raise TrainingError(f"The teacher for tuning {str(pack.path)!r} scores {vocab[0]} "
                            f"tokens, the base {vocab[1]}; pass the fine-tune the pack was "
                            "compressed from.")
    own = dict(teacher.named_parameters())
    for name in pack.manifest["tensors"]:
        theirs, ours = own.get(name), model.get_parameter(name)
        if theirs is None or theirs.shape != ours.shape:
            raise TrainingError(
                f"The teacher for tuning {str(pack.path)!r} has no tensor {name!r} of shape "
                f"{tuple(ours.shape)}; pass the fine-tune the pack was compressed from.")
